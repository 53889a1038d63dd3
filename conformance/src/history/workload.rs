//! The randomised clients of a history check. Each client is one user with
//! one endpoint joined to every room of the run; its stream is read by a
//! task that records deliveries, while the client itself posts, reads whole
//! rooms and now and then drops its connection and resumes from the last seq
//! it saw. Choices come from a seeded generator per client, so a seed names a
//! workload (the server's timing still varies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pchat_protocol::client::{Client, ClientError, StreamItem};
use pchat_protocol::{Event, PostMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Entry, History, Op, Params, Phase, Recorder};
use crate::ctx::User;

/// How long an operation may take before its outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// One client of the workload: a user and the endpoint it uses.
pub struct Actor {
    pub user: User,
    pub endpoint: String,
}

/// Runs the workload against `rooms` (fresh, readable and writable by every
/// client) and returns the history.
pub async fn run(
    http: reqwest::Client,
    base: &str,
    clients: Vec<Actor>,
    rooms: Vec<u64>,
    params: Params,
    seed: u64,
) -> History {
    let rec = Arc::new(Recorder::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let client = Client::with_http(http.clone(), base.to_owned()).as_token(&c.user.token);
        let p = Process {
            id: i as u32 + 1,
            client,
            endpoint: c.endpoint,
            rooms: rooms.clone(),
            rec: rec.clone(),
            rng: StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            cursors: Arc::new(Mutex::new(HashMap::new())),
            reader: None,
        };
        tasks.push(tokio::spawn(p.run(params.ops, barrier.clone())));
    }
    for t in tasks {
        let _ = t.await;
    }
    History::new(seed, rooms, rec.snapshot())
}

struct Process {
    id: u32,
    client: Client,
    endpoint: String,
    rooms: Vec<u64>,
    rec: Arc<Recorder>,
    rng: StdRng,
    /// Highest seq delivered per room; shared with the reader task.
    cursors: Arc<Mutex<HashMap<u64, u64>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Process {
    async fn run(mut self, ops: usize, barrier: Arc<tokio::sync::Barrier>) {
        for room in self.rooms.clone() {
            if let Ok(Ok(j)) =
                tokio::time::timeout(OP_TIMEOUT, self.client.join(room, &self.endpoint, None)).await
            {
                let mut cur = self.cursors.lock().expect("cursor lock");
                self.rec
                    .record(Entry::new(self.id, Phase::Ok, Op::Join, room).seq(j.last_seq));
                cur.insert(room, j.last_seq);
            }
        }
        self.connect().await;
        for n in 0..ops {
            if self.reader.as_ref().is_none_or(|r| r.is_finished()) {
                self.connect().await;
            }
            let room = self.rooms[self.rng.gen_range(0..self.rooms.len())];
            match self.rng.gen_range(0..100) {
                0..=59 => self.post(room, n).await,
                60..=74 => self.read(room).await,
                75..=84 => self.connect().await,
                _ => {
                    let ms = self.rng.gen_range(0..30);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
        // Everyone has stopped posting: wait for the stream to catch up with
        // every acknowledged post, then read each room once more.
        barrier.wait().await;
        let want: HashMap<u64, u64> = self.rec.with(|entries| {
            let mut m = HashMap::new();
            for e in entries.iter() {
                if e.f == Op::Post && e.phase == Phase::Ok {
                    let s = m.entry(e.room).or_insert(0);
                    *s = (*s).max(e.seq.unwrap_or(0));
                }
            }
            m
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            let behind = {
                let cur = self.cursors.lock().expect("cursor lock");
                want.iter().any(|(r, s)| cur.get(r).is_some_and(|c| c < s))
            };
            if !behind {
                break;
            }
            if self.reader.as_ref().is_none_or(|r| r.is_finished()) {
                self.connect().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        for room in self.rooms.clone() {
            self.read(room).await;
        }
    }

    /// (Re)opens the stream, resuming every joined room from its cursor.
    async fn connect(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
            let _ = r.await;
        }
        let resume: Vec<(u64, u64)> = {
            let cur = self.cursors.lock().expect("cursor lock");
            cur.iter().map(|(r, s)| (*r, *s)).collect()
        };
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(OP_TIMEOUT, self.client.stream(&self.endpoint, &resume)).await
        else {
            return;
        };
        {
            let _cur = self.cursors.lock().expect("cursor lock");
            for (room, seq) in &resume {
                self.rec
                    .record(Entry::new(self.id, Phase::Ok, Op::Resume, *room).seq(*seq));
            }
        }
        let (id, rec, cursors) = (self.id, self.rec.clone(), self.cursors.clone());
        self.reader = Some(tokio::spawn(async move {
            while let Ok(item) = stream.next().await {
                match item {
                    StreamItem::Event(Event::Message(m)) => {
                        let mut cur = cursors.lock().expect("cursor lock");
                        rec.record(
                            Entry::new(id, Phase::Ok, Op::Deliver, m.room)
                                .seq(m.seq)
                                .text(&m.text),
                        );
                        let c = cur.entry(m.room).or_insert(0);
                        *c = (*c).max(m.seq);
                    }
                    StreamItem::Event(_) => {}
                    StreamItem::Closed(..) => return,
                }
            }
        }));
    }

    async fn post(&mut self, room: u64, n: usize) {
        let text = format!("p{}-{n} {}", self.id, self.rng.gen::<u32>());
        self.rec
            .record(Entry::new(self.id, Phase::Invoke, Op::Post, room).text(&text));
        let msg = PostMessage {
            text: text.clone(),
            kind: None,
            title: None,
            client_key: None,
        };
        let done = Entry::new(self.id, Phase::Ok, Op::Post, room).text(&text);
        match tokio::time::timeout(OP_TIMEOUT, self.client.post_message(room, &msg)).await {
            Ok(Ok(reply)) => self.rec.record(done.seq(reply.body.seq)),
            Ok(Err(ClientError::Api { body, .. })) => {
                let ms = body.error.retry_after_ms.unwrap_or(0);
                self.rec.record(Entry {
                    phase: Phase::Fail,
                    ..done.error(body.error.code.as_str())
                });
                tokio::time::sleep(Duration::from_millis(ms.min(1000))).await;
            }
            Ok(Err(e)) => self.rec.record(Entry {
                phase: Phase::Info,
                ..done.error(&e.to_string())
            }),
            Err(_) => self.rec.record(Entry {
                phase: Phase::Info,
                ..done.error("timeout")
            }),
        }
    }

    /// Reads the whole room, page by page.
    async fn read(&mut self, room: u64) {
        self.rec
            .record(Entry::new(self.id, Phase::Invoke, Op::Read, room));
        let done = Entry::new(self.id, Phase::Ok, Op::Read, room);
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let q = format!("after={after}&limit=200");
            match tokio::time::timeout(OP_TIMEOUT, self.client.history(room, &q)).await {
                Ok(Ok(h)) => {
                    if let Some(m) = h.messages.last() {
                        after = m.seq;
                    }
                    all.extend(h.messages.into_iter().map(|m| (m.seq, m.text)));
                    if !h.has_more {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    let phase = if e.code().is_some() {
                        Phase::Fail
                    } else {
                        Phase::Info
                    };
                    self.rec.record(Entry {
                        phase,
                        ..done.error(&e.to_string())
                    });
                    return;
                }
                Err(_) => {
                    self.rec.record(Entry {
                        phase: Phase::Info,
                        ..done.error("timeout")
                    });
                    return;
                }
            }
        }
        self.rec.record(done.messages(all));
    }
}
