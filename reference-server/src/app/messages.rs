//! Posting, history, message search, and the publisher that fans committed
//! messages out to the hub.

use std::sync::Arc;

use pchat_protocol::{self as wire, ErrorCode, MessageKind};
use tokio::sync::mpsc;

use super::rooms::deny;
use super::{views, App, Caller};
use crate::domain::RoomId;
use crate::error::{ApiError, ApiResult};
use crate::hub::{to_frame, Hub};
use crate::metrics::Metrics;
use crate::store::{Appended, NewMessage, SearchQuery, Slice, StoredMessage};

/// The outcome of a post: a new message (201) or a replayed one (200).
pub enum Posted {
    New(wire::Message),
    Replayed(wire::Message),
}

/// Where history reads start and end.
#[derive(Clone, Copy, Debug)]
pub enum HistoryFrom {
    Latest,
    Before(u64),
    After(u64),
}

/// A message search as the caller asked for it.
#[derive(Clone, Debug, Default)]
pub struct MessageSearch {
    pub q: Option<String>,
    pub rooms: Option<Vec<RoomId>>,
    pub author: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub exact: bool,
    pub case_sensitive: bool,
    pub limit: usize,
}

fn check_post(req: &wire::PostMessage, max_chars: usize) -> ApiResult<()> {
    let n = req.text.chars().count();
    if n == 0 || n > max_chars {
        return Err(ApiError::invalid(
            "text",
            format!("text must be 1 to {max_chars} characters"),
        ));
    }
    match (req.kind.unwrap_or_default(), &req.title) {
        (MessageKind::Story, None) => {
            return Err(ApiError::invalid("title", "a story needs a title"))
        }
        (MessageKind::Story, Some(t)) if t.is_empty() || t.chars().count() > 256 => {
            return Err(ApiError::invalid(
                "title",
                "title must be 1 to 256 characters",
            ))
        }
        (MessageKind::Normal | MessageKind::Alert, Some(_)) => {
            return Err(ApiError::invalid("title", "only stories have a title"))
        }
        _ => {}
    }
    if let Some(k) = &req.client_key {
        if k.is_empty() || k.len() > 64 || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::invalid(
                "client_key",
                "client_key must be 1 to 64 visible ASCII characters",
            ));
        }
    }
    Ok(())
}

impl App {
    /// `POST /v1/rooms/{id}/messages` (PC-10).
    pub async fn post(
        &self,
        caller: &Caller,
        room: RoomId,
        req: wire::PostMessage,
    ) -> ApiResult<Posted> {
        check_post(&req, self.config.limits.max_text_chars)?;
        let (keep_text, room_name) = self.with_room(caller, room, |dir, r, access| {
            if !access.post {
                return Err(deny(access, "post"));
            }
            let history = dir.categories.get(&r.category).is_some_and(|c| c.history);
            Ok((history, r.name.clone()))
        })?;
        self.charge(caller, true)?;
        let kind = req.kind.unwrap_or_default();
        let msg = NewMessage {
            room,
            sender: caller.name.clone(),
            kind,
            text: req.text,
            title: req.title,
            client_key: req.client_key,
            keep_text,
            compliance_room_name: self.compliance_on().then_some(room_name),
        };
        match self.store.append(msg).await? {
            Appended::New(m) => {
                self.metrics.posts.inc();
                self.hub.acked(m.room, m.seq);
                Ok(Posted::New(views::message(&m)))
            }
            Appended::Existing(m) => {
                self.hub.acked(m.room, m.seq);
                Ok(Posted::Replayed(views::message(&m)))
            }
            Appended::Conflict => Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                "this client_key was used for a different message",
            )
            .with_field("client_key")),
        }
    }

    /// `GET /v1/rooms/{id}/messages` (PC-11.1).
    pub async fn history(
        &self,
        caller: &Caller,
        room: RoomId,
        from: HistoryFrom,
        limit: usize,
    ) -> ApiResult<wire::History> {
        let (history_on, name) = self.with_room(caller, room, |dir, r, access| {
            if !access.read {
                return Err(deny(access, "read"));
            }
            Ok((
                dir.categories.get(&r.category).is_some_and(|c| c.history),
                r.name.clone(),
            ))
        })?;
        if !history_on {
            return Ok(wire::History {
                messages: Vec::new(),
                has_more: false,
            });
        }
        #[cfg(feature = "bug-injection")]
        let from = crate::inject::history_from(from);
        let slice = match from {
            HistoryFrom::Latest => Slice::Latest,
            HistoryFrom::Before(s) => Slice::Before(s),
            HistoryFrom::After(s) => Slice::After(s),
        };
        let (rows, has_more) = self.store.messages(room, slice, limit).await?;
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let mut ev = self.event("BACKCHAT", Some((room, name)), &caller.name);
            ev.detail = Some(format!("history seq {}..={}", first.seq, last.seq));
            self.comply(vec![ev]).await?;
        }
        Ok(wire::History {
            messages: rows.iter().map(views::message).collect(),
            has_more,
        })
    }

    /// `GET /v1/search/messages` (PC-11.2).
    pub async fn search_messages(
        &self,
        caller: &Caller,
        s: MessageSearch,
    ) -> ApiResult<wire::SearchResults> {
        let q = s.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        if q.is_none() && s.author.is_none() && s.from_ms.is_none() && s.to_ms.is_none() {
            return Err(ApiError::invalid("q", "give q, author, from or to"));
        }
        let rooms: Vec<RoomId> = match &s.rooms {
            Some(list) => {
                let mut readable = Vec::with_capacity(list.len());
                for r in list {
                    let history = self.with_room(caller, *r, |dir, rec, access| {
                        if !access.read {
                            return Err(deny(access, "search"));
                        }
                        Ok(dir.categories.get(&rec.category).is_some_and(|c| c.history))
                    })?;
                    if history {
                        readable.push(*r);
                    }
                }
                readable
            }
            None => {
                let dir = self.dir();
                dir.rooms
                    .values()
                    .filter(|r| dir.categories.get(&r.category).is_some_and(|c| c.history))
                    .filter(|r| dir.access(caller.id, r).read)
                    .map(|r| r.id)
                    .collect()
            }
        };
        let terms: Vec<String> = match q {
            None => Vec::new(),
            Some(q) if s.exact => vec![q.to_owned()],
            Some(q) => q.split_whitespace().map(str::to_owned).collect(),
        };
        let terms = if s.case_sensitive {
            terms
        } else {
            terms.into_iter().map(|t| t.to_lowercase()).collect()
        };
        let query = SearchQuery {
            rooms,
            terms,
            case_sensitive: s.case_sensitive,
            author: s.author,
            from_ms: s.from_ms,
            to_ms: s.to_ms,
            limit: s.limit,
        };
        let (rows, truncated) = self.store.search(query).await?;
        Ok(wire::SearchResults {
            results: rows.iter().map(views::message).collect(),
            truncated,
        })
    }
}

/// Fans committed messages out, in commit order, until the store closes the channel.
pub async fn run_publisher(
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    mut commits: mpsc::UnboundedReceiver<StoredMessage>,
) {
    while let Some(m) = commits.recv().await {
        metrics.publish_pending.dec();
        let frame = to_frame(&wire::Event::Message(views::message(&m)));
        #[cfg(feature = "bug-injection")]
        if crate::inject::reorder(&hub, m.room, m.seq, &frame) {
            continue;
        }
        hub.publish(m.room, m.seq, frame);
    }
}
