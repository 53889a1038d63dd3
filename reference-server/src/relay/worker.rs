//! The stream worker process (`reference-server stream-worker`): holds
//! client sockets handed over by its node and moves frames between them and
//! the link on its standard input. It owns no state of the service: it exits
//! when the link closes.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::link::{self, to_node, to_worker};

/// A write to a client that takes longer than this drops the socket. The
/// node closes a stream whose credits run out for its own, shorter, send
/// timeout first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Credits returned at most this many frames apart.
const ACK_EVERY: u32 = 16;

/// Settings passed by the node.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub read_buffer_bytes: usize,
    pub max_frame_bytes: usize,
}

enum Cmd {
    Text(String),
    Ping,
    Close(u16, String),
}

struct Channel {
    cmds: mpsc::UnboundedSender<Cmd>,
    end: CancellationToken,
}

/// Runs the worker on the link given as standard input, until it closes.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("standard input")?;
    let link = std::os::unix::net::UnixStream::from(fd);
    link.set_nonblocking(true)?;
    let link = Arc::new(UnixStream::from_std(link).context("standard input is not a socket")?);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(write_link(link.clone(), out_rx));
    let mut channels: HashMap<u64, Channel> = HashMap::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    loop {
        match link::read_with_fds(&link, &mut buf, &mut fds).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The node is gone: so are our streams.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for frame in link::decode(&mut buf)? {
            let ch = frame.channel;
            match frame.kind {
                to_worker::OPEN => {
                    let Some(fd) = fds.pop_front() else {
                        tracing::error!(channel = ch, "OPEN without a socket");
                        send(&out_tx, to_node::GONE, ch, b"");
                        continue;
                    };
                    let (cmds, rx) = mpsc::unbounded_channel();
                    let end = CancellationToken::new();
                    channels.insert(
                        ch,
                        Channel {
                            cmds,
                            end: end.clone(),
                        },
                    );
                    tokio::spawn(serve(ch, fd, rx, end, out_tx.clone(), opts));
                }
                to_worker::TEXT => {
                    if let (Some(c), Ok(text)) =
                        (channels.get(&ch), String::from_utf8(frame.payload))
                    {
                        let _ = c.cmds.send(Cmd::Text(text));
                    }
                }
                to_worker::PING => {
                    if let Some(c) = channels.get(&ch) {
                        let _ = c.cmds.send(Cmd::Ping);
                    }
                }
                to_worker::CLOSE => {
                    if let Some(c) = channels.remove(&ch) {
                        let code = frame
                            .payload
                            .get(..2)
                            .map(|b| u16::from_le_bytes([b[0], b[1]]))
                            .unwrap_or(1000);
                        let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[]))
                            .into_owned();
                        let _ = c.cmds.send(Cmd::Close(code, reason));
                    }
                }
                _ => {
                    if let Some(c) = channels.remove(&ch) {
                        c.end.cancel();
                    }
                }
            }
        }
    }
}

fn send(out: &mpsc::UnboundedSender<Vec<u8>>, kind: u8, channel: u64, payload: &[u8]) {
    let mut frame = Vec::with_capacity(13 + payload.len());
    link::encode(&mut frame, kind, channel, payload);
    let _ = out.send(frame);
}

async fn write_link(link: Arc<UnixStream>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if link::write_all(&link, &buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

/// Moves frames between one client socket and its channel.
async fn serve(
    ch: u64,
    fd: OwnedFd,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    end: CancellationToken,
    out: mpsc::UnboundedSender<Vec<u8>>,
    opts: Options,
) {
    let tcp = std::net::TcpStream::from(fd);
    let tcp = match tcp
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(tcp))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(channel = ch, error = %e, "cannot take over a socket");
            send(&out, to_node::GONE, ch, b"");
            return;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(opts.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(opts.max_frame_bytes))
        .max_frame_size(Some(opts.max_frame_bytes));
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    let mut unacked: u32 = 0;
    // After an oversized frame the reader stops; the node answers with a Close.
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            _ = end.cancelled() => return,
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Text(text)) => {
                    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(text))).await {
                        Ok(Ok(())) => {
                            unacked += 1;
                            if unacked >= ACK_EVERY || cmds.is_empty() {
                                send(&out, to_node::ACK, ch, &unacked.to_le_bytes());
                                unacked = 0;
                            }
                        }
                        _ => {
                            send(&out, to_node::GONE, ch, b"");
                            return;
                        }
                    }
                }
                Some(Cmd::Ping) => {
                    if !matches!(
                        tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await,
                        Ok(Ok(()))
                    ) {
                        send(&out, to_node::GONE, ch, b"");
                        return;
                    }
                }
                Some(Cmd::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        sink.send(Message::Close(Some(frame))),
                    )
                    .await;
                    return;
                }
            },
            msg = stream.next(), if reading => match msg {
                None => {
                    send(&out, to_node::GONE, ch, b"");
                    reading = false;
                }
                Some(Ok(Message::Ping(_))) => send(&out, to_node::PING, ch, b""),
                Some(Ok(Message::Pong(_))) => send(&out, to_node::PONG, ch, b""),
                Some(Ok(Message::Close(_))) => {
                    // The reply to the client's Close is queued; push it out.
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
                    send(&out, to_node::CLOSED, ch, b"");
                    return;
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => send(&out, to_node::DATA, ch, b""),
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(_))) => {
                    send(&out, to_node::TOO_BIG, ch, b"");
                    reading = false;
                }
                Some(Err(_)) => {
                    send(&out, to_node::GONE, ch, b"");
                    reading = false;
                }
            },
        }
    }
}
