//! The event stream: one WebSocket per endpoint (PC-9).
//!
//! Each connection is one task that owns its socket and selects over: the
//! close signal (replaced, slow consumer, user disabled), server shutdown, its
//! outbound queue, frames from the client, and the heartbeat. It keeps, per
//! joined room, the last sequence number it delivered, which makes delivery
//! exactly-once and gap-free whatever the races around joining and resuming:
//! a message at or below that number is dropped, and a message beyond the
//! next one is preceded by the missing ones read from the store.
//!
//! The socket itself is held here, or, when the node runs stream workers
//! ([`crate::relay`]), by a worker: the connection is the same either way.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use pchat_protocol::{self as wire, close, ErrorCode, RemovedReason};
use serde::Deserialize;

use super::{Auth, Query};
use crate::admission::Admitted;
use crate::app::{views, App, Caller};
use crate::domain::RoomId;
use crate::error::{ApiError, ApiResult};
use crate::hub::{to_frame, Direct, Outbound, Session, SessionHold, TooManyEndpoints};
use crate::relay::{Incoming, Relayed};
use crate::store::Slice;

/// A send that takes longer than this means the client is not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Close frame with `code`, and what is queued before it, gets
/// to leave before the socket is dropped without it, on either socket path
/// (this task's or a stream worker's): a slow consumer's (4008) waits
/// behind full socket buffers until the client reads again, so it gets as
/// long as the client had to take a frame.
pub(crate) fn close_linger(code: u16) -> Duration {
    if code == close::SLOW_CONSUMER {
        SEND_TIMEOUT
    } else {
        Duration::from_secs(1)
    }
}
/// Most resume entries one connection may name.
const MAX_RESUME: usize = 1000;
/// Page size of gap-filling reads.
const CATCHUP_PAGE: usize = 500;

/// A second descriptor of a connection's socket, taken when it is accepted
/// on a node that runs stream workers, so that a stream's socket can be
/// handed to a worker after the upgrade (`serve::run`).
#[derive(Clone)]
pub struct SocketHandle(pub(super) Option<Arc<OwnedFd>>);

#[derive(Deserialize)]
pub struct StreamQuery {
    endpoint: Option<String>,
    resume: Option<String>,
    /// `true`: join the resume entries' rooms first (PC-9.4d).
    rejoin: Option<bool>,
    /// Read by the `Auth` extractor; listed so it is not an unknown parameter.
    #[allow(dead_code)]
    access_token: Option<String>,
}

fn parse_resume(raw: Option<&str>) -> ApiResult<HashMap<RoomId, u64>> {
    let bad = || ApiError::invalid("resume", "resume is a comma-separated list of <room>:<seq>");
    let mut out = HashMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    for item in raw.split(',') {
        let (room, seq) = item.split_once(':').ok_or_else(bad)?;
        let room: u64 = room.trim().parse().map_err(|_| bad())?;
        let seq: u64 = seq.trim().parse().map_err(|_| bad())?;
        out.insert(RoomId(room as i64), seq);
    }
    if out.len() > MAX_RESUME {
        return Err(ApiError::invalid(
            "resume",
            format!("at most {MAX_RESUME} resume entries"),
        ));
    }
    Ok(out)
}

/// `GET /v1/stream`.
pub async fn stream(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Query(q): Query<StreamQuery>,
    handle: Option<Extension<ConnectInfo<SocketHandle>>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let endpoint = q
        .endpoint
        .ok_or_else(|| ApiError::invalid("endpoint", "endpoint is required"))?;
    crate::app::check_endpoint(&endpoint)?;
    let resume = parse_resume(q.resume.as_deref())?;
    let ws =
        ws.map_err(|r| ApiError::invalid("upgrade", format!("expected a WebSocket upgrade: {r}")))?;
    // Taken here and held by the stream until it ends; dropped with the
    // request if the upgrade never completes.
    let slot = app.stream_slots.clone().try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            ErrorCode::Busy,
            "the server holds as many streams as it may",
        );
        e.retry_after_ms = Some(5000);
        e
    })?;
    // Sessions count whether connected or lingering (PC-9.1). Refused here
    // before any wait when already over; the session below keeps the limit.
    let limit = app.config.limits.max_endpoints_per_user;
    let (exists, count) = app.hub.sessions_of(caller.id, &endpoint);
    if !exists && count >= limit {
        return Err(TooManyEndpoints.into());
    }
    // A start that will replay missed messages from the store waits for a
    // turn at the stream gate; refused (503 busy), nothing has changed
    // (PC-2.4b). The turn is held until the replay is done.
    let rejoin = q.rejoin.unwrap_or(false);
    let turn = app
        .admit_stream(&caller, &endpoint, &resume, rejoin)
        .await?;
    // Held until the stream is attached: a lingering session cannot expire
    // (and leave its rooms) between the rejoin and the attach.
    let hold = app.hub.session(caller.id, &caller.name, &endpoint, limit)?;
    if rejoin {
        app.rejoin(&caller, hold.session(), &resume).await;
    }
    let s = &app.config.stream;
    let ws = ws
        .read_buffer_size(s.read_buffer_bytes)
        .write_buffer_size(s.write_buffer_bytes)
        .max_write_buffer_size(s.write_buffer_bytes.max(64 * 1024) * 4)
        .max_message_size(s.max_client_frame_bytes)
        .max_frame_size(s.max_client_frame_bytes);
    let handle = handle.and_then(|Extension(ConnectInfo(h))| h.0);
    Ok(ws.on_upgrade(move |socket| async move {
        let socket = hand_over(&app, socket, handle);
        Connection::run(app, caller, hold, resume, socket, turn).await;
        drop(slot);
    }))
}

/// Gives the socket to a stream worker when the node runs them.
fn hand_over(app: &App, socket: WebSocket, handle: Option<Arc<OwnedFd>>) -> Socket {
    let (Some(workers), Some(handle)) = (&app.workers, handle) else {
        return Socket::Local(Box::new(socket));
    };
    // The handle is the only other owner once the request is gone.
    let fd = match Arc::try_unwrap(handle) {
        Ok(fd) => fd,
        Err(shared) => match shared.try_clone() {
            Ok(fd) => fd,
            Err(_) => return Socket::Local(Box::new(socket)),
        },
    };
    match workers.open(fd) {
        Ok(relayed) => {
            // The worker has its own descriptor; this one closes now.
            drop(socket);
            app.metrics.streams_relayed.inc();
            Socket::Relayed(relayed)
        }
        Err(_) => Socket::Local(Box::new(socket)),
    }
}

/// Whether a read failed because the client's frame or message exceeded
/// the configured size.
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// The reason sent with a close that another part of the server asked for.
fn close_reason(code: u16) -> &'static str {
    match code {
        close::REPLACED => "replaced by a newer connection",
        close::SLOW_CONSUMER => "slow consumer",
        close::UNAUTHENTICATED => "no longer authenticated",
        close::POLICY_DISABLED => "policy disabled",
        _ => "closed",
    }
}

/// Why a connection ended.
enum End {
    /// Close with this code.
    Close(u16, &'static str),
    /// The client started the closing handshake; the WebSocket layer has
    /// queued the reply (echoing its code), which only needs flushing.
    PeerClosed,
    /// The peer is gone or broke the protocol at the transport level.
    Gone,
}

/// Where a stream's socket is held.
enum Socket {
    Local(Box<WebSocket>),
    Relayed(Relayed),
}

impl Socket {
    async fn send_text(&mut self, frame: Utf8Bytes) -> Result<(), ()> {
        match self {
            Socket::Local(ws) => ws.send(Message::Text(frame)).await.map_err(|_| ()),
            Socket::Relayed(r) => r.send_text(frame.as_str()).await,
        }
    }

    async fn ping(&mut self) -> Result<(), ()> {
        match self {
            Socket::Local(ws) => ws
                .send(Message::Ping(Default::default()))
                .await
                .map_err(|_| ()),
            Socket::Relayed(r) => {
                r.ping();
                Ok(())
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        match self {
            Socket::Local(ws) => {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ =
                    tokio::time::timeout(close_linger(code), ws.send(Message::Close(Some(frame))))
                        .await;
            }
            Socket::Relayed(r) => r.close(code, reason),
        }
    }

    /// After the client's Close: push out the queued reply.
    async fn finish_peer_close(&mut self) {
        if let Socket::Local(ws) = self {
            let _ = tokio::time::timeout(
                close_linger(close::NORMAL),
                futures_util::SinkExt::flush(ws),
            )
            .await;
        }
    }

    async fn recv(&mut self) -> Incoming {
        match self {
            Socket::Local(ws) => match ws.recv().await {
                None => Incoming::Gone,
                // A frame over the limit (PC-9.6b). The WebSocket layer
                // reports it only as an error; its text is the one sign.
                Some(Err(e)) if is_too_big(&e) => Incoming::TooBig,
                Some(Err(_)) => Incoming::Gone,
                Some(Ok(Message::Close(_))) => Incoming::Closed,
                Some(Ok(Message::Ping(_))) => Incoming::Ping,
                Some(Ok(Message::Pong(_))) => Incoming::Pong,
                Some(Ok(Message::Text(_) | Message::Binary(_))) => Incoming::Data,
            },
            Socket::Relayed(r) => r.recv().await,
        }
    }
}

struct Connection {
    app: Arc<App>,
    socket: Socket,
    /// Per joined room: the last sequence number sent (parked in `direct`
    /// while the task is idle).
    delivered: HashMap<RoomId, u64>,
    last_heard: Instant,
    /// The hub's direct route to this relayed stream.
    direct: Option<Arc<Direct>>,
}

impl Connection {
    async fn run(
        app: Arc<App>,
        caller: Caller,
        hold: SessionHold,
        resume: HashMap<RoomId, u64>,
        socket: Socket,
        turn: Admitted,
    ) {
        let session = hold.session().clone();
        // A relayed stream gets the direct route (the bug-injection build
        // keeps every message on the task, where its injections act).
        let direct = match &socket {
            Socket::Relayed(r) if !cfg!(feature = "bug-injection") => {
                Some(Arc::new(Direct::new(r.direct())))
            }
            _ => None,
        };
        let attached = app.hub.attach(&hold, direct.clone());
        drop(hold);
        // The caller again, now that the stream is attached: a user disabled
        // (or whose policy went off) while this start waited was not found
        // by `Hub::close_user`; one changed from here on is (PC-4.2b).
        let lost = app.lost_service(&caller);
        app.metrics.connections.inc();
        let conn = attached.conn.clone();
        let mut rx = attached.rx;
        let mut me = Connection {
            app: app.clone(),
            socket,
            delivered: HashMap::new(),
            last_heard: Instant::now(),
            direct,
        };
        tracing::debug!(user = %caller.name, endpoint = %session.endpoint, "stream connected");
        let started = match lost {
            Some(code) => Err(End::Close(code, close_reason(code))),
            None => me.start(&session, &attached.rooms, &resume).await,
        };
        // The replay from the store is done: the next start may have the turn.
        drop(turn);
        let end = match started {
            Err(end) => end,
            Ok(()) => me.serve(&mut rx, &conn.close).await,
        };
        // Detached first: nothing more is queued for a socket that may
        // spend its Close's linger waiting for the client to read.
        app.hub.detach(&session, conn.id);
        match end {
            End::Close(code, reason) => me.socket.close(code, reason).await,
            End::PeerClosed => me.socket.finish_peer_close().await,
            End::Gone => {}
        }
        app.metrics.connections.dec();
        tracing::debug!(user = %caller.name, endpoint = %session.endpoint, "stream ended");
    }

    async fn send(&mut self, frame: Utf8Bytes) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send_text(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.app.metrics.slow_consumer_closes.inc();
                Err(End::Close(close::SLOW_CONSUMER, "slow consumer"))
            }
        }
    }

    async fn send_event(&mut self, ev: &wire::Event) -> Result<(), End> {
        self.send(to_frame(ev)).await
    }

    /// Sends `ready`, tells about resume entries for rooms not joined, and
    /// replays what resumed rooms missed.
    async fn start(
        &mut self,
        session: &Arc<Session>,
        rooms: &[(RoomId, u64)],
        resume: &HashMap<RoomId, u64>,
    ) -> Result<(), End> {
        let ready = wire::Event::Ready {
            endpoint: session.endpoint.clone(),
            rooms: rooms
                .iter()
                .map(|(r, l)| wire::JoinedRoom {
                    room: r.0 as u64,
                    last_seq: *l,
                })
                .collect(),
        };
        self.send_event(&ready).await?;
        let mut stale: Vec<RoomId> = resume
            .keys()
            .filter(|r| !rooms.iter().any(|(j, _)| j == *r))
            .copied()
            .collect();
        stale.sort();
        for room in stale {
            self.send_event(&wire::Event::Removed {
                room: room.0 as u64,
                reason: RemovedReason::NotJoined,
            })
            .await?;
        }
        for (room, last) in rooms {
            match resume.get(room) {
                Some(cursor) if cursor < last => {
                    self.delivered.insert(*room, *cursor);
                    // Up to what is published now: what came after the
                    // join point while no stream was attached was queued
                    // nowhere.
                    let upto = self.app.hub.last_seq(*room).max(*last);
                    self.fill(*room, upto).await?;
                }
                _ => {
                    self.delivered.insert(*room, *last);
                    // A room joined while disconnected starts at its join
                    // point, which may lie behind what is published now.
                    let now = self.app.hub.last_seq(*room);
                    if now > *last {
                        self.fill(*room, now).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends, from the store, every message of `room` after the last
    /// delivered one up to and including `upto`.
    async fn fill(&mut self, room: RoomId, upto: u64) -> Result<(), End> {
        loop {
            let from = self.delivered.get(&room).copied().unwrap_or(upto);
            if from >= upto {
                return Ok(());
            }
            let (rows, _) = match self
                .app
                .store
                .messages(room, Slice::Between(from, upto), CATCHUP_PAGE)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "catch-up read failed");
                    return Err(End::Close(close::GOING_AWAY, "store unavailable"));
                }
            };
            if rows.is_empty() {
                // The rest are unreadable (history off, removed): nothing to send.
                self.delivered.insert(room, upto);
                return Ok(());
            }
            for m in &rows {
                self.send(to_frame(&wire::Event::Message(views::message(m))))
                    .await?;
                self.app.metrics.catchup_messages.inc();
                self.delivered.insert(room, m.seq);
            }
            if rows.len() < CATCHUP_PAGE {
                self.delivered.insert(room, upto);
            }
        }
    }

    async fn serve(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
        close_signal: &crate::hub::CloseSignal,
    ) -> End {
        let cfg = &self.app.config.stream;
        let timeout = Duration::from_secs(cfg.heartbeat_timeout_s);
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs(cfg.heartbeat_interval_s.max(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let shutdown = self.app.shutdown.clone();
        // Made once, not per event: a fan-out wakes every connection.
        let closed = close_signal.fired();
        tokio::pin!(closed);
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        loop {
            if let Some(direct) = &self.direct {
                direct.park(&mut self.delivered, || rx.is_empty());
            }
            let step: Result<(), End> = tokio::select! {
                biased;
                _ = &mut closed => {
                    let code = close_signal.code();
                    Err(End::Close(code, close_reason(code)))
                }
                _ = &mut stopping => Err(End::Close(close::GOING_AWAY, "server shutting down")),
                item = rx.recv() => match item {
                    None => Err(End::Close(close::SLOW_CONSUMER, "slow consumer")),
                    Some(item) => {
                        if let Some(direct) = &self.direct {
                            direct.unpark(&mut self.delivered);
                        }
                        self.outbound(item).await
                    }
                },
                heard = self.socket.recv() => match heard {
                    Incoming::Gone => Err(End::Gone),
                    Incoming::TooBig => Err(End::Close(close::MESSAGE_TOO_BIG, "frame too big")),
                    Incoming::Closed => Err(End::PeerClosed),
                    Incoming::Ping | Incoming::Pong => {
                        self.last_heard = Instant::now();
                        Ok(())
                    }
                    Incoming::Data => {
                        Err(End::Close(close::UNSUPPORTED_DATA, "clients send no data frames in v1"))
                    }
                },
                _ = heartbeat.tick() => {
                    if self.last_heard.elapsed() > timeout {
                        self.app.metrics.heartbeat_timeouts.inc();
                        Err(End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"))
                    } else {
                        match tokio::time::timeout(SEND_TIMEOUT, self.socket.ping()).await {
                            Ok(Ok(())) => Ok(()),
                            _ => Err(End::Gone),
                        }
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn outbound(&mut self, item: Outbound) -> Result<(), End> {
        match item {
            Outbound::Message { room, seq, frame } => {
                let Some(done) = self.delivered.get(&room).copied() else {
                    return Ok(());
                };
                if seq <= done {
                    return Ok(());
                }
                if seq > done + 1 {
                    self.fill(room, seq - 1).await?;
                }
                #[cfg(feature = "bug-injection")]
                if crate::inject::dropped(seq) {
                    self.delivered.insert(room, seq);
                    return Ok(());
                }
                self.send(frame).await?;
                self.delivered.insert(room, seq);
                Ok(())
            }
            Outbound::Frame(frame) => self.send(frame).await,
            Outbound::Joined { room, upto } => {
                self.delivered.insert(room, upto);
                Ok(())
            }
            Outbound::Left { room, reason } => {
                self.delivered.remove(&room);
                match reason {
                    Some(reason) => {
                        self.send_event(&wire::Event::Removed {
                            room: room.0 as u64,
                            reason,
                        })
                        .await
                    }
                    None => Ok(()),
                }
            }
        }
    }
}
