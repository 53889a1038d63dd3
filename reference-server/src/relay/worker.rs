//! The stream worker process (`reference-server stream-worker`): holds
//! client sockets handed over by its node and moves frames between them and
//! the link on its standard input. It owns no state of the service: it exits
//! when the link closes.
//!
//! The worker is plumbing on the hot path of every delivery, so it does as
//! little per frame as it can: one thread, no task switch for a frame the
//! socket takes at once. A text frame from the link is framed for
//! WebSocket and written to its socket straight from the link's read loop;
//! only what the socket does not take waits, in that connection's queue,
//! for its task to write it when the socket is writable again. Credits go
//! back to the node in batches of [`ACK_AT`] written frames (see
//! [`super::CREDITS`]). Each connection's task also reads what the client
//! sends: it answers pings and the closing handshake and tells the node
//! about pings, pongs, data frames, frames over the size limit and the
//! socket's end.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Cursor};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use pchat_protocol::close;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::link::{self, to_node, to_worker};
use super::CREDITS;
use crate::http::close_linger;

/// A socket that takes none of its queued frames for this long is dropped.
/// The node closes a stream whose credits run out for its own, shorter,
/// send timeout first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Credits are returned once this many text frames of a channel were
/// written: half the window, so the node always has the other half.
const ACK_AT: u32 = (CREDITS / 2) as u32;

/// WebSocket opcodes the worker sends.
mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Settings passed by the node.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub read_buffer_bytes: usize,
    pub max_frame_bytes: usize,
}

/// Runs the worker on the link given as standard input, until it closes.
pub fn main(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // Ctrl-C in a terminal reaches the whole process group: the worker
        // leaves when its node closes the link, not before.
        tokio::task::spawn_local(async {
            loop {
                let _ = tokio::signal::ctrl_c().await;
            }
        });
        run(opts).await
    })
}

/// Frames for the node, gathered and written in batches by one task.
#[derive(Default)]
struct ToNode {
    buf: RefCell<Vec<u8>>,
    wake: Notify,
}

impl ToNode {
    fn send(&self, kind: u8, channel: u64, payload: &[u8]) {
        link::encode(&mut self.buf.borrow_mut(), kind, channel, payload);
        self.wake.notify_one();
    }
}

async fn write_to_node(link: Rc<UnixStream>, to_node: Rc<ToNode>) {
    loop {
        to_node.wake.notified().await;
        let bytes = std::mem::take(&mut *to_node.buf.borrow_mut());
        if !bytes.is_empty() && link::write_all(&link, &bytes).await.is_err() {
            return;
        }
    }
}

type Conns = Rc<RefCell<HashMap<u64, Rc<Conn>>>>;

async fn run(opts: Options) -> anyhow::Result<()> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("standard input")?;
    let link = std::os::unix::net::UnixStream::from(fd);
    link.set_nonblocking(true)?;
    let link = Rc::new(UnixStream::from_std(link).context("standard input is not a socket")?);
    let to_node = Rc::new(ToNode::default());
    tokio::task::spawn_local(write_to_node(link.clone(), to_node.clone()));
    let conns: Conns = Rc::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    loop {
        match link::read_with_fds(&link, &mut buf, &mut fds).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The node is gone: so are our streams.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        link::for_each_frame(&mut buf, |kind, ch, payload| {
            let conn = || conns.borrow().get(&ch).cloned();
            match kind {
                to_worker::OPEN => match fds.pop_front().map(|fd| Conn::open(ch, fd)) {
                    Some(Ok(c)) => {
                        let c = Rc::new(c);
                        conns.borrow_mut().insert(ch, c.clone());
                        tokio::task::spawn_local(serve(c, to_node.clone(), conns.clone(), opts));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(channel = ch, error = %e, "cannot take over a socket");
                        to_node.send(to_node::GONE, ch, b"");
                    }
                    None => {
                        tracing::error!(channel = ch, "OPEN without a socket");
                        to_node.send(to_node::GONE, ch, b"");
                    }
                },
                to_worker::TEXT => {
                    if let Some(c) = conn() {
                        c.queue(ws_frame(opcode::TEXT, payload), true, &to_node);
                    }
                }
                to_worker::PING => {
                    if let Some(c) = conn() {
                        c.queue(ws_frame(opcode::PING, b""), false, &to_node);
                    }
                }
                to_worker::CLOSE => {
                    // `code: u16` (little-endian) and the reason.
                    if let Some(c) = conns.borrow_mut().remove(&ch) {
                        let code = payload
                            .get(..2)
                            .map_or(1000, |b| u16::from_le_bytes([b[0], b[1]]));
                        let mut body = code.to_be_bytes().to_vec();
                        body.extend_from_slice(payload.get(2..).unwrap_or(&[]));
                        c.close(ws_frame(opcode::CLOSE, &body), close_linger(code), &to_node);
                    }
                }
                _ => {
                    if let Some(c) = conns.borrow_mut().remove(&ch) {
                        c.end();
                    }
                }
            }
        })?;
    }
}

/// A WebSocket frame from the server: final, unmasked.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// An encoded frame waiting for its socket.
struct Pending {
    bytes: Vec<u8>,
    /// A text frame: it returns a credit once written.
    text: bool,
}

/// One client socket.
struct Conn {
    ch: u64,
    tcp: TcpStream,
    /// Frames not yet written; `sent` bytes of the first are.
    pending: RefCell<VecDeque<Pending>>,
    sent: Cell<usize>,
    /// Text frames written since credits were last returned.
    unacked: Cell<u32>,
    /// Wakes the connection's task: something to write, or to end.
    wake: Notify,
    /// The node closed the channel: write what is queued, then drop, at
    /// the latest at this instant.
    closing: Cell<Option<Instant>>,
    /// Drop the socket now.
    ended: Cell<bool>,
}

impl Conn {
    fn open(ch: u64, fd: OwnedFd) -> io::Result<Conn> {
        let tcp = std::net::TcpStream::from(fd);
        tcp.set_nonblocking(true)?;
        Ok(Conn {
            ch,
            tcp: TcpStream::from_std(tcp)?,
            pending: RefCell::default(),
            sent: Cell::new(0),
            unacked: Cell::new(0),
            wake: Notify::new(),
            closing: Cell::new(None),
            ended: Cell::new(false),
        })
    }

    /// Writes `bytes` now if nothing is queued and the socket takes it,
    /// else queues it for the connection's task.
    fn queue(&self, bytes: Vec<u8>, text: bool, to_node: &ToNode) {
        if self.ended.get() || self.closing.get().is_some() {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            pending.push_back(Pending { bytes, text });
            return;
        }
        let sent = match self.tcp.try_write(&bytes) {
            Ok(n) if n == bytes.len() => {
                if text {
                    self.written(to_node);
                }
                return;
            }
            Ok(n) => n,
            // Would block, or failed: the task finds out which when it
            // writes again.
            Err(_) => 0,
        };
        self.sent.set(sent);
        pending.push_back(Pending { bytes, text });
        self.wake.notify_one();
    }

    fn written(&self, to_node: &ToNode) {
        let n = self.unacked.get() + 1;
        if n >= ACK_AT {
            to_node.send(to_node::ACK, self.ch, &n.to_le_bytes());
            self.unacked.set(0);
        } else {
            self.unacked.set(n);
        }
    }

    /// Writes queued frames as far as the socket takes them. Returns
    /// whether anything was written.
    fn flush(&self, to_node: &ToNode) -> io::Result<bool> {
        let mut pending = self.pending.borrow_mut();
        let mut progress = false;
        while let Some(front) = pending.front() {
            let from = self.sent.get();
            match self.tcp.try_write(&front.bytes[from..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    progress = true;
                    if from + n < front.bytes.len() {
                        self.sent.set(from + n);
                        continue;
                    }
                    let text = front.text;
                    pending.pop_front();
                    self.sent.set(0);
                    if text {
                        self.written(to_node);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// The node closed the channel with this Close frame, which gets
    /// `linger` to leave.
    fn close(&self, frame: Vec<u8>, linger: Duration, to_node: &ToNode) {
        self.queue(frame, false, to_node);
        self.closing.set(Some(Instant::now() + linger));
        self.wake.notify_one();
    }

    fn end(&self) {
        self.ended.set(true);
        self.wake.notify_one();
    }
}

/// What a client frame asks of the connection.
enum Heard {
    /// Nothing more to read now.
    More,
    /// The client closed; its Close is answered.
    Closed,
    /// A frame over the size limit: reading stops, the node closes.
    TooBig,
    /// A protocol error or the end of the socket.
    Gone,
}

/// Runs one connection: writes what its queue holds when the socket is
/// writable, reads and answers what the client sends, and drops the
/// socket when the node ends the channel, the client goes, or a write
/// stalls.
async fn serve(conn: Rc<Conn>, to_node: Rc<ToNode>, conns: Conns, opts: Options) {
    let mut read_buf: Vec<u8> = Vec::with_capacity(opts.read_buffer_bytes.max(16));
    let mut reading = true;
    // Since when the queue has waited without any progress.
    let mut stalled_since: Option<Instant> = None;
    let ch = conn.ch;
    let tell_node = loop {
        if conn.ended.get() {
            break None;
        }
        let waiting = !conn.pending.borrow().is_empty();
        let closing = conn.closing.get();
        if !waiting {
            stalled_since = None;
            if closing.is_some() {
                break None;
            }
        } else if stalled_since.is_none() {
            stalled_since = Some(Instant::now());
        }
        let deadline = match (closing, stalled_since) {
            (Some(by), _) => Some(by),
            (None, Some(at)) => Some(at + WRITE_TIMEOUT),
            (None, None) => None,
        };
        tokio::select! {
            biased;
            _ = conn.wake.notified() => {}
            r = conn.tcp.writable(), if waiting => {
                match r.and_then(|()| conn.flush(&to_node)) {
                    Ok(true) => stalled_since = None,
                    Ok(false) => {}
                    Err(_) => break Some(to_node::GONE),
                }
            }
            r = conn.tcp.readable(), if reading && closing.is_none() => {
                if r.is_err() {
                    break Some(to_node::GONE);
                }
                match read_client(&conn, &mut read_buf, opts, &to_node) {
                    Heard::More => {}
                    Heard::Closed => {
                        // The reply is queued; it leaves like a node's Close.
                        conn.closing.set(Some(Instant::now() + close_linger(close::NORMAL)));
                        to_node.send(to_node::CLOSED, ch, b"");
                        reading = false;
                    }
                    Heard::TooBig => {
                        to_node.send(to_node::TOO_BIG, ch, b"");
                        reading = false;
                    }
                    Heard::Gone => break Some(to_node::GONE),
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                break closing.is_none().then_some(to_node::GONE);
            }
        }
    };
    if let Some(kind) = tell_node {
        to_node.send(kind, ch, b"");
    }
    // The socket closes with the last reference; the map holds one until
    // the node ends the channel, unless it is dropped here.
    let mut map = conns.borrow_mut();
    if map.get(&ch).is_some_and(|c| Rc::ptr_eq(c, &conn)) {
        map.remove(&ch);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads what the socket has and handles every complete client frame.
fn read_client(conn: &Conn, buf: &mut Vec<u8>, opts: Options, to_node: &ToNode) -> Heard {
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        match conn.tcp.try_read_buf(buf) {
            Ok(0) => return Heard::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Heard::Gone,
        }
    }
    loop {
        let mut cursor = Cursor::new(&buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Heard::More,
            Err(_) => return Heard::Gone,
        };
        if len > opts.max_frame_bytes as u64 {
            buf.clear();
            return Heard::TooBig;
        }
        let start = cursor.position() as usize;
        let end = start + len as usize;
        if buf.len() < end {
            return Heard::More;
        }
        // Clients mask every frame; no extension is negotiated.
        let Some(mask) = header.mask else {
            return Heard::Gone;
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Heard::Gone;
        }
        let mut payload = buf[start..end].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        buf.drain(..end);
        match header.opcode {
            OpCode::Control(_) if !header.is_final || len > 125 => return Heard::Gone,
            OpCode::Control(Control::Ping) => {
                conn.queue(ws_frame(opcode::PONG, &payload), false, to_node);
                to_node.send(to_node::PING, conn.ch, b"");
            }
            OpCode::Control(Control::Pong) => to_node.send(to_node::PONG, conn.ch, b""),
            OpCode::Control(Control::Close) => {
                // Echo the client's status code, if it sent one.
                conn.queue(
                    ws_frame(opcode::CLOSE, payload.get(..2).unwrap_or(&[])),
                    false,
                    to_node,
                );
                return Heard::Closed;
            }
            OpCode::Data(Data::Text | Data::Binary | Data::Continue) => {
                to_node.send(to_node::DATA, conn.ch, b"");
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Heard::Gone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_carry_their_length_in_the_shortest_form() {
        assert_eq!(ws_frame(opcode::TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let mid = ws_frame(opcode::TEXT, &[b'x'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = ws_frame(opcode::TEXT, &vec![b'x'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        // What a client library parses back.
        let mut cursor = Cursor::new(&mid[..]);
        let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(
            (h.opcode, len, h.mask),
            (OpCode::Data(Data::Text), 300, None)
        );
    }
}
