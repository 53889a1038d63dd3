//! Stream workers: child processes that hold the client sockets of event
//! streams for this node.
//!
//! One process may hold only as many sockets as its open-file limit allows
//! (20,000 on the machines this project measures on), while a node is sized
//! for more endpoints than that. With `stream.workers = N` the node starts N
//! worker processes (`reference-server stream-worker`), each connected by a
//! Unix socket pair. A stream is still accepted, authenticated and upgraded
//! here; then its socket is handed to the least loaded worker with
//! `SCM_RIGHTS` and closed in this process. Everything a stream does, its
//! session, resume, gap filling, heartbeats and closing, stays in
//! `http::stream`; the worker only moves frames between the socket and a
//! channel of the link ([`link`] describes the framing).
//!
//! Back-pressure crosses the link as credits: a channel may have
//! [`CREDITS`] text frames in flight, and the worker returns credits as it
//! writes them to the client. A client that stops reading stops the credits,
//! and the stream's send timeout closes it as a slow consumer, exactly as
//! for a socket held here.
//!
//! A worker that dies takes its streams with it (their clients reconnect and
//! resume) and is started again.

pub mod link;
pub mod worker;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::StreamConfig;
use link::{to_node, to_worker};

/// Text frames a channel may have in flight to its worker.
pub const CREDITS: usize = 64;

/// What the client did, as a worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Ping,
    Pong,
    /// The client closed; the worker answered its Close frame.
    Closed,
    /// The client sent a data frame.
    Data,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The socket (or the worker) is gone.
    Gone,
}

struct ChannelEnd {
    events: mpsc::UnboundedSender<Incoming>,
    credits: Arc<Semaphore>,
}

/// What waits to be written to a worker: frames, and the sockets that
/// travel with their `OPEN` frames.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    /// Each socket with the offset of its `OPEN` frame in `bytes`.
    sockets: VecDeque<(usize, OwnedFd)>,
    /// The writer has stopped: the link is gone.
    dead: bool,
}

/// One running worker and its link.
struct Link {
    index: usize,
    out: Mutex<Outgoing>,
    /// Wakes the writer.
    wake: Notify,
    channels: Mutex<HashMap<u64, ChannelEnd>>,
}

impl Link {
    fn send(&self, kind: u8, channel: u64, payload: &[u8]) {
        let mut out = lock(&self.out);
        if out.dead {
            return;
        }
        link::encode(&mut out.bytes, kind, channel, payload);
        drop(out);
        self.wake.notify_one();
    }

    /// Queues `socket` with the `OPEN` frame of `channel`. Fails when the
    /// link is gone.
    fn open(&self, channel: u64, socket: OwnedFd) -> Result<(), OwnedFd> {
        let mut out = lock(&self.out);
        if out.dead {
            return Err(socket);
        }
        let at = out.bytes.len();
        link::encode(&mut out.bytes, to_worker::OPEN, channel, b"");
        out.sockets.push_back((at, socket));
        drop(out);
        self.wake.notify_one();
        Ok(())
    }

    fn load(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Ends every channel: the worker is gone.
    fn fail_all(&self) {
        lock(&self.out).dead = true;
        for (_, end) in lock(&self.channels).drain() {
            end.credits.close();
            let _ = end.events.send(Incoming::Gone);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's stream workers.
pub struct Workers {
    slots: Vec<Mutex<Option<Arc<Link>>>>,
    next_channel: AtomicU64,
    pids: Mutex<Vec<Option<u32>>>,
}

/// How to start a worker.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub read_buffer_bytes: usize,
    pub max_client_frame_bytes: usize,
}

impl WorkerCommand {
    pub fn from_config(cfg: &StreamConfig) -> anyhow::Result<WorkerCommand> {
        let program = match &cfg.worker_program {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        Ok(WorkerCommand {
            program,
            read_buffer_bytes: cfg.read_buffer_bytes,
            max_client_frame_bytes: cfg.max_client_frame_bytes,
        })
    }

    fn spawn(&self) -> std::io::Result<(tokio::process::Child, UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let child = tokio::process::Command::new(&self.program)
            .arg("stream-worker")
            .arg("--read-buffer-bytes")
            .arg(self.read_buffer_bytes.to_string())
            .arg("--max-frame-bytes")
            .arg(self.max_client_frame_bytes.to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .kill_on_drop(true)
            .spawn()?;
        ours.set_nonblocking(true)?;
        Ok((child, UnixStream::from_std(ours)?))
    }
}

impl Workers {
    /// Starts `n` workers, each restarted when it dies, until `shutdown`.
    pub fn start(n: usize, cmd: WorkerCommand, shutdown: CancellationToken) -> Arc<Workers> {
        let workers = Arc::new(Workers {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            next_channel: AtomicU64::new(1),
            pids: Mutex::new(vec![None; n]),
        });
        for index in 0..n {
            tokio::spawn(supervise(
                workers.clone(),
                index,
                cmd.clone(),
                shutdown.clone(),
            ));
        }
        workers
    }

    /// Waits until every worker is running, or `within` passes. Returns how
    /// many are running.
    pub async fn ready(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let up = self.slots.iter().filter(|s| lock(s).is_some()).count();
            if up == self.slots.len() || tokio::time::Instant::now() >= deadline {
                return up;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Process ids of the running workers.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.pids).iter().flatten().copied().collect()
    }

    /// Hands `socket` to the least loaded running worker. `None` when no
    /// worker runs (the caller keeps the socket).
    pub fn open(&self, socket: OwnedFd) -> Result<Relayed, OwnedFd> {
        let link = self
            .slots
            .iter()
            .filter_map(|s| lock(s).clone())
            .min_by_key(|l| l.load());
        let Some(link) = link else {
            return Err(socket);
        };
        let channel = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let credits = Arc::new(Semaphore::new(CREDITS));
        lock(&link.channels).insert(
            channel,
            ChannelEnd {
                events: tx,
                credits: credits.clone(),
            },
        );
        if let Err(socket) = link.open(channel, socket) {
            // The worker is gone: the stream stays here.
            lock(&link.channels).remove(&channel);
            return Err(socket);
        }
        Ok(Relayed {
            link,
            channel,
            events: rx,
            credits,
            ended: false,
        })
    }
}

async fn supervise(
    workers: Arc<Workers>,
    index: usize,
    cmd: WorkerCommand,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match cmd.spawn() {
            Ok((mut child, stream)) => {
                let pid = child.id();
                lock(&workers.pids)[index] = pid;
                tracing::info!(worker = index, pid, "stream worker started");
                let stream = Arc::new(stream);
                let link = Arc::new(Link {
                    index,
                    out: Mutex::default(),
                    wake: Notify::new(),
                    channels: Mutex::new(HashMap::new()),
                });
                *lock(&workers.slots[index]) = Some(link.clone());
                let writer = tokio::spawn(write_link(stream.clone(), link.clone()));
                tokio::select! {
                    r = read_link(&stream, &link) => {
                        tracing::error!(worker = index, result = ?r, "stream worker link ended");
                    }
                    status = child.wait() => {
                        tracing::error!(worker = index, ?status, "stream worker exited");
                    }
                    _ = shutdown.cancelled() => {
                        // Streams close themselves on the same token; give
                        // their Close frames a moment to leave.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                *lock(&workers.slots[index]) = None;
                lock(&workers.pids)[index] = None;
                link.fail_all();
                writer.abort();
                if shutdown.is_cancelled() {
                    let _ = child.kill().await;
                    return;
                }
                let _ = child.kill().await;
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::error!(worker = index, error = %e, program = %cmd.program.display(), "cannot start a stream worker");
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Writes what the link has queued, everything that gathered since the
/// last write in one go, each socket with its `OPEN` frame.
async fn write_link(stream: Arc<UnixStream>, link: Arc<Link>) {
    let mut bytes = Vec::with_capacity(64 * 1024);
    let mut sockets = VecDeque::new();
    let result: std::io::Result<()> = async {
        loop {
            link.wake.notified().await;
            {
                let mut out = lock(&link.out);
                std::mem::swap(&mut out.bytes, &mut bytes);
                std::mem::swap(&mut out.sockets, &mut sockets);
            }
            let mut from = 0;
            for (at, socket) in sockets.drain(..) {
                link::write_all(&stream, &bytes[from..at]).await?;
                let open = at + link::EMPTY_FRAME;
                link::send_with_fd(&stream, &bytes[at..open], &socket).await?;
                // This process's copy of the socket closes here.
                drop(socket);
                from = open;
            }
            link::write_all(&stream, &bytes[from..]).await?;
            bytes.clear();
        }
    }
    .await;
    tracing::warn!(worker = link.index, error = ?result.err(), "stream worker link write failed");
    lock(&link.out).dead = true;
}

async fn read_link(stream: &UnixStream, link: &Link) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut fds = VecDeque::new();
    loop {
        if link::read_with_fds(stream, &mut buf, &mut fds).await? == 0 {
            return Ok(());
        }
        fds.clear();
        let channels = lock(&link.channels);
        link::for_each_frame(&mut buf, |kind, channel, payload| {
            let Some(end) = channels.get(&channel) else {
                return;
            };
            let event = match kind {
                to_node::ACK => {
                    let n = payload
                        .get(..4)
                        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                    end.credits.add_permits(n as usize);
                    return;
                }
                to_node::PING => Incoming::Ping,
                to_node::PONG => Incoming::Pong,
                to_node::CLOSED => Incoming::Closed,
                to_node::DATA => Incoming::Data,
                to_node::TOO_BIG => Incoming::TooBig,
                _ => Incoming::Gone,
            };
            let _ = end.events.send(event);
        })?;
    }
}

/// This node's end of one relayed event stream.
pub struct Relayed {
    link: Arc<Link>,
    channel: u64,
    events: mpsc::UnboundedReceiver<Incoming>,
    credits: Arc<Semaphore>,
    ended: bool,
}

impl Relayed {
    /// Queues a text frame once the worker has room for it. Fails when the
    /// worker is gone.
    pub async fn send_text(&self, text: &str) -> Result<(), ()> {
        let permit = self.credits.acquire().await.map_err(|_| ())?;
        permit.forget();
        self.link
            .send(to_worker::TEXT, self.channel, text.as_bytes());
        Ok(())
    }

    pub fn ping(&self) {
        self.link.send(to_worker::PING, self.channel, b"");
    }

    /// Closes the stream with a Close frame; the worker drops the socket.
    pub fn close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_le_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.link.send(to_worker::CLOSE, self.channel, &payload);
        self.ended = true;
    }

    /// The next thing the client did.
    pub async fn recv(&mut self) -> Incoming {
        self.events.recv().await.unwrap_or(Incoming::Gone)
    }

    /// Which worker holds the socket.
    pub fn worker(&self) -> usize {
        self.link.index
    }

    /// A way to queue text frames on this channel without waiting, for the
    /// hub's direct route ([`crate::hub::Direct`]).
    pub fn direct(&self) -> DirectSend {
        DirectSend {
            link: self.link.clone(),
            channel: self.channel,
            credits: self.credits.clone(),
        }
    }
}

/// Queues text frames on a relayed channel from outside its connection's
/// task, sharing the channel's credits.
pub struct DirectSend {
    link: Arc<Link>,
    channel: u64,
    credits: Arc<Semaphore>,
}

#[cfg(test)]
impl DirectSend {
    /// A channel of a link that no worker reads, with `credits` credits,
    /// for the hub's tests: `sent` takes the text frames queued on it so
    /// far, and a credit is given back by adding a permit to `credits`.
    pub fn for_test(credits: usize) -> (DirectSend, Arc<Semaphore>, impl Fn() -> Vec<String>) {
        let link = Arc::new(Link {
            index: 0,
            out: Mutex::default(),
            wake: Notify::new(),
            channels: Mutex::default(),
        });
        let credits = Arc::new(Semaphore::new(credits));
        let send = DirectSend {
            link: link.clone(),
            channel: 1,
            credits: credits.clone(),
        };
        let sent = move || {
            let mut bytes = std::mem::take(&mut lock(&link.out).bytes);
            let mut texts = Vec::new();
            link::for_each_frame(&mut bytes, |kind, _, payload| {
                assert_eq!(kind, to_worker::TEXT);
                texts.push(String::from_utf8(payload.to_vec()).expect("text frames"));
            })
            .expect("frames the link encoded");
            assert!(bytes.is_empty(), "only whole frames");
            texts
        };
        (send, credits, sent)
    }
}

impl DirectSend {
    /// Queues `text` if the channel has a credit; false if it has none (the
    /// client is behind: the connection's task waits for one instead).
    pub fn try_send_text(&self, text: &str) -> bool {
        match self.credits.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.link
                    .send(to_worker::TEXT, self.channel, text.as_bytes());
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if !self.ended {
            self.link.send(to_worker::END, self.channel, b"");
        }
        lock(&self.link.channels).remove(&self.channel);
    }
}
