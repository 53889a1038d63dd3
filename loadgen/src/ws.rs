//! The client side of an event stream: the WebSocket upgrade (RFC 6455 §4)
//! and the frames a server sends, read straight off the socket.
//!
//! A large room's fan-out makes tens of thousands of the generator's
//! sockets readable at once, and the generator shares its cores with the
//! server it measures, so every microsecond a frame costs here is taken
//! from the server. Through tokio-tungstenite a frame took two reads (the
//! second only to find the socket empty), a waker proxy on every poll and
//! an allocation for its text. Here a frame is parsed in the read buffer
//! and handed out borrowed, and a read that comes back short of the space
//! it was given means the socket was drained: its readiness is cleared
//! without a second read (the read reports `WouldBlock` to tokio's
//! `try_io`, which clears it, and hands its bytes over aside). tokio's
//! readiness ticks make that safe: a segment that arrives after the read
//! marks the socket ready again, whether before or after the clear.
//!
//! Reads go through [`crate::stamp::recv`], so a frame carries the kernel's
//! arrival stamp of the read that completed it. Pings are answered, the
//! closing handshake is echoed, and the client sends no data frames (the
//! protocol allows none, PC-9.6b).

use std::io;
use std::ops::Range;
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::stamp;

/// Bytes a stream reads at most at once while its frames are small. Most
/// event frames are a few hundred bytes; a longer one grows the buffer to
/// its size (up to [`MAX_FRAME`]), which shrinks back once it is read.
const READ_BUFFER: usize = 1024;
/// A buffer grown beyond this for one long frame goes back to
/// [`READ_BUFFER`] once it is empty: an idle stream keeps little.
const SHRINK_ABOVE: usize = 16 * 1024;
/// The longest frame, and the longest message of several fragments, a
/// stream accepts.
pub const MAX_FRAME: usize = 16 << 20;
/// The longest upgrade answer (status line, headers and the body of a
/// refusal) a stream reads.
const MAX_ANSWER: usize = 64 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What [`EventStream::next`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message, whole, and the kernel's receive stamp of the read
    /// that completed it (nanoseconds since the Unix epoch; 0 when that
    /// read had none, see [`crate::stamp`]).
    Text { text: &'a str, arrived_ns: u64 },
    /// The server closed the stream, with its close code if it gave one.
    /// The close was echoed; the next call answers `None`.
    Close(Option<u16>),
}

/// Why a stream ended other than by a close frame or a clean end of file.
#[derive(Debug)]
pub enum StreamError {
    Io(io::Error),
    /// The server broke RFC 6455 (a masked frame, a bad control frame, text
    /// that is not UTF-8, ...).
    Protocol(&'static str),
    /// A frame or message longer than [`MAX_FRAME`].
    TooBig(u64),
    /// The connection ended inside a frame.
    Eof,
}

impl StreamError {
    /// A short name for the reason, as the load generator counts them.
    pub fn short(&self) -> &'static str {
        match self {
            StreamError::Io(_) => "io",
            StreamError::Protocol(_) => "protocol",
            StreamError::TooBig(_) => "capacity",
            StreamError::Eof => "eof",
        }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Io(e) => write!(f, "stream i/o: {e}"),
            StreamError::Protocol(what) => write!(f, "websocket protocol: {what}"),
            StreamError::TooBig(n) => write!(f, "frame of {n} bytes, over {MAX_FRAME}"),
            StreamError::Eof => write!(f, "connection ended inside a frame"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> StreamError {
        StreamError::Io(e)
    }
}

/// The answer to an upgrade request that was not the upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body (as much as `Content-Length` announced; empty without one).
    pub body: Vec<u8>,
}

/// How an upgrade failed.
#[derive(Debug)]
pub enum UpgradeError {
    /// The server answered with something other than 101.
    Refused(Refusal),
    /// The answer was not a valid upgrade, or the connection failed.
    Failed(String),
}

impl From<io::Error> for UpgradeError {
    fn from(e: io::Error) -> UpgradeError {
        UpgradeError::Failed(format!("upgrade i/o: {e}"))
    }
}

/// One endpoint's event stream.
#[derive(Debug)]
pub struct EventStream {
    io: TcpStream,
    /// Bytes read; `start..end` not yet taken.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The receive stamp of the latest read that brought bytes.
    arrived_ns: u64,
    /// A message arriving in fragments: whether it is text (binary ones are
    /// dropped) and its text so far.
    fragmented: Option<bool>,
    partial: Vec<u8>,
    /// Frames to send (pongs, a close) not yet written.
    out: Vec<u8>,
    /// A close frame was sent or received.
    closing: bool,
    /// The close frame arrived: nothing more is read.
    closed: bool,
}

impl EventStream {
    /// Upgrades `tcp`, a connection to the server `request` names, and
    /// enables receive stamps on it. `request` is a WebSocket upgrade
    /// request with its `Sec-WebSocket-Key` (as
    /// [`pchat_protocol::client::stream_request`] makes them).
    pub async fn upgrade(tcp: TcpStream, request: &Request) -> Result<EventStream, UpgradeError> {
        stamp::enable(&tcp)?;
        let key = request
            .headers()
            .get("sec-websocket-key")
            .ok_or_else(|| UpgradeError::Failed("request without Sec-WebSocket-Key".into()))?
            .as_bytes()
            .to_vec();
        let mut stream = EventStream {
            io: tcp,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            arrived_ns: 0,
            fragmented: None,
            partial: Vec::new(),
            out: request_bytes(request),
            closing: false,
            closed: false,
        };
        std::future::poll_fn(|cx| stream.poll_flush(cx)).await?;
        let (status, head, retry_after, accept, upgrade, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut answer = httparse::Response::new(&mut headers);
            let parsed = answer
                .parse(&stream.buf[stream.start..stream.end])
                .map_err(|e| UpgradeError::Failed(format!("upgrade answer: {e}")))?;
            if let httparse::Status::Complete(head) = parsed {
                let header = |name: &str| {
                    answer
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                break (
                    answer.code.unwrap_or(0),
                    head,
                    header("retry-after"),
                    header("sec-websocket-accept"),
                    header("upgrade"),
                    header("content-length").and_then(|v| v.trim().parse::<usize>().ok()),
                );
            }
            if stream.end - stream.start >= MAX_ANSWER {
                return Err(UpgradeError::Failed(format!(
                    "upgrade answer head over {MAX_ANSWER} bytes"
                )));
            }
            let want = stream.end - stream.start + 1;
            if std::future::poll_fn(|cx| stream.poll_read(cx, want)).await? == 0 {
                return Err(UpgradeError::Failed(
                    "connection closed during the upgrade".into(),
                ));
            }
        };
        stream.start += head;
        if status != 101 {
            let length = length.unwrap_or(0).min(MAX_ANSWER);
            while stream.end - stream.start < length {
                if std::future::poll_fn(|cx| stream.poll_read(cx, length)).await? == 0 {
                    break;
                }
            }
            let body_end = stream.end.min(stream.start + length);
            return Err(UpgradeError::Refused(Refusal {
                status,
                retry_after,
                body: stream.buf[stream.start..body_end].to_vec(),
            }));
        }
        if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return Err(UpgradeError::Failed(
                "101 without Upgrade: websocket".into(),
            ));
        }
        if accept.as_deref() != Some(derive_accept_key(&key).as_str()) {
            return Err(UpgradeError::Failed(
                "Sec-WebSocket-Accept does not match the key".into(),
            ));
        }
        // What followed the head in the same reads is the first frames; the
        // read that brought them had no stamp of interest.
        stream.arrived_ns = 0;
        Ok(stream)
    }

    /// The next message, or `None` once the stream ended cleanly (after a
    /// [`Frame::Close`], or at end of file between frames). Cancel-safe:
    /// what was read stays in the stream.
    pub async fn next(&mut self) -> Option<Result<Frame<'_>, StreamError>> {
        let message = match std::future::poll_fn(|cx| self.poll_message(cx)).await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let bytes = match message {
            Message::Text(range) => &self.buf[range],
            Message::Fragmented => &self.partial[..],
            Message::Close(code) => return Some(Ok(Frame::Close(code))),
        };
        // The one UTF-8 check of a message's text.
        Some(
            std::str::from_utf8(bytes)
                .map(|text| Frame::Text {
                    text,
                    arrived_ns: self.arrived_ns,
                })
                .map_err(|_| StreamError::Protocol("text not UTF-8")),
        )
    }

    /// Starts the closing handshake with 1000 and writes it out.
    pub async fn close(&mut self) -> io::Result<()> {
        if !self.closing {
            self.closing = true;
            queue_frame(&mut self.out, OP_CLOSE, &1000u16.to_be_bytes());
        }
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, StreamError>>> {
        loop {
            // Pongs and the close echo go out as the socket takes them; a
            // full send buffer does not hold up reading.
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Some(Err(e.into())));
            }
            if self.closed {
                return Poll::Ready(None);
            }
            let header = match parse_header(&self.buf[self.start..self.end]) {
                Ok(h) => h,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            let need = match header {
                Some(h) if self.end - self.start >= h.size() => {
                    let body = self.start + h.header_len..self.start + h.size();
                    self.start = body.end;
                    match self.take(h, body) {
                        Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                        Ok(None) => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Some(h) => h.size(),
                // The longest header.
                None => 14,
            };
            match ready!(self.poll_read(cx, need)) {
                Ok(0) if self.start == self.end && self.fragmented.is_none() => {
                    return Poll::Ready(None)
                }
                Ok(0) => return Poll::Ready(Some(Err(StreamError::Eof))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Takes a whole frame whose payload is `body` in the buffer: a
    /// message to hand out, or `None` for a frame handled here.
    fn take(&mut self, h: Header, body: Range<usize>) -> Result<Option<Message>, StreamError> {
        let payload = &self.buf[body.clone()];
        match (h.opcode, self.fragmented) {
            (OP_TEXT, None) if h.fin => Ok(Some(Message::Text(body))),
            (OP_BINARY, None) if h.fin => Ok(None),
            (OP_TEXT | OP_BINARY, None) => {
                let text = h.opcode == OP_TEXT;
                self.fragmented = Some(text);
                self.partial.clear();
                if text {
                    self.partial.extend_from_slice(payload);
                }
                Ok(None)
            }
            (OP_CONTINUATION, Some(text)) => {
                if text {
                    if self.partial.len() + payload.len() > MAX_FRAME {
                        return Err(StreamError::TooBig(
                            (self.partial.len() + payload.len()) as u64,
                        ));
                    }
                    self.partial.extend_from_slice(payload);
                }
                if !h.fin {
                    return Ok(None);
                }
                self.fragmented = None;
                if !text {
                    return Ok(None);
                }
                Ok(Some(Message::Fragmented))
            }
            (OP_PING, _) => {
                if !self.closing {
                    queue_frame(&mut self.out, OP_PONG, payload);
                }
                Ok(None)
            }
            (OP_PONG, _) => Ok(None),
            (OP_CLOSE, _) => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(StreamError::Protocol("close frame of one byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if !self.closing {
                    self.closing = true;
                    let echo = code.map(u16::to_be_bytes);
                    queue_frame(
                        &mut self.out,
                        OP_CLOSE,
                        echo.as_ref().map_or(&[], |c| &c[..]),
                    );
                }
                self.closed = true;
                Ok(Some(Message::Close(code)))
            }
            (OP_CONTINUATION, None) => Err(StreamError::Protocol("continuation without a start")),
            (OP_TEXT | OP_BINARY, Some(_)) => {
                Err(StreamError::Protocol("new message inside a fragmented one"))
            }
            _ => Err(StreamError::Protocol("reserved opcode")),
        }
    }

    /// Reads once, with room for at least `need` bytes from `start` (the
    /// buffer grows for a long frame). Answers the bytes read; 0 is the end
    /// of the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>, need: usize) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE && need <= READ_BUFFER {
                self.buf = vec![0; READ_BUFFER];
            }
        }
        if self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            let space = &mut self.buf[self.end..];
            let room = space.len();
            let mut drained = None;
            let got = self.io.try_io(Interest::READABLE, || {
                let (n, stamp) = stamp::recv(&self.io, space)?;
                if n > 0 && n < room {
                    // Short of the room it had: the socket is drained, and
                    // WouldBlock has tokio clear its readiness.
                    drained = Some((n, stamp));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, stamp))
            });
            let (n, stamp) = match (got, drained) {
                (_, Some(read)) => read,
                (Ok(read), None) => read,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            if n > 0 {
                self.end += n;
                // A read without a stamp leaves the arrival unknown, not the
                // previous read's (earlier) one.
                self.arrived_ns = stamp.unwrap_or(0);
            }
            return Poll::Ready(Ok(n));
        }
    }

    /// Writes out what is queued.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write(&self.out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A message found by [`EventStream::poll_message`], by where it lies.
enum Message {
    Text(Range<usize>),
    /// In `partial`.
    Fragmented,
    Close(Option<u16>),
}

/// A frame's header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    header_len: usize,
    len: usize,
}

impl Header {
    fn size(&self) -> usize {
        self.header_len + self.len
    }
}

/// The header at the start of `b`, `None` while it is incomplete. A server's
/// frames are unmasked; control frames are final and at most 125 bytes.
fn parse_header(b: &[u8]) -> Result<Option<Header>, StreamError> {
    let [b0, b1, rest @ ..] = b else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(StreamError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(StreamError::Protocol("masked frame from the server"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let (len, header_len) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(l) => (u64::from_be_bytes(l.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(StreamError::Protocol(
            "control frame fragmented or over 125 bytes",
        ));
    }
    if len > MAX_FRAME as u64 {
        return Err(StreamError::TooBig(len));
    }
    Ok(Some(Header {
        fin,
        opcode,
        header_len,
        len: len as usize,
    }))
}

/// Appends a client frame (final, masked, payload at most 125 bytes: the
/// client sends only control frames).
fn queue_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    let mask: [u8; 4] = rand::random();
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// The upgrade request as HTTP/1.1 bytes.
fn request_bytes(request: &Request) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    /// Both ends of a loopback connection (client, server) and an upgrade
    /// request naming it.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream, Request) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let request = format!("ws://{addr}/v1/stream?endpoint=e0")
            .into_client_request()
            .unwrap();
        (client.unwrap(), server.unwrap().0, request)
    }

    #[tokio::test]
    async fn messages_arrive_whole_pings_are_answered_and_the_close_is_echoed() {
        let (client, server, request) = pair().await;
        let long = "x".repeat(100_000);
        let sent = long.clone();
        let server = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(server).await.unwrap();
            ws.send(WsMessage::text("first")).await.unwrap();
            ws.send(WsMessage::Ping(b"beat".to_vec().into()))
                .await
                .unwrap();
            ws.send(WsMessage::text(sent)).await.unwrap();
            ws.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
            let start = WsFrame::message(b"frag".to_vec(), OpCode::Data(Data::Text), false);
            ws.send(WsMessage::Frame(start)).await.unwrap();
            ws.send(WsMessage::Ping(b"mid".to_vec().into()))
                .await
                .unwrap();
            let end = WsFrame::message(b"ment".to_vec(), OpCode::Data(Data::Continue), true);
            ws.send(WsMessage::Frame(end)).await.unwrap();
            ws.send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::from(4008),
                reason: "slow".into(),
            })))
            .await
            .unwrap();
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                got.push(m);
            }
            got
        });
        let mut stream = EventStream::upgrade(client, &request).await.unwrap();
        let mut texts = Vec::new();
        loop {
            match stream.next().await {
                Some(Ok(Frame::Text { text, .. })) => texts.push(text.to_owned()),
                Some(Ok(Frame::Close(code))) => {
                    assert_eq!(code, Some(4008));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(stream.next().await.is_none(), "nothing after the close");
        assert_eq!(texts, ["first".to_owned(), long, "fragment".to_owned()]);
        // The long frame grew the buffer; once read, it shrank back.
        assert_eq!(stream.buf.len(), READ_BUFFER);
        let got = server.await.unwrap();
        assert_eq!(
            got,
            [
                WsMessage::Pong(b"beat".to_vec().into()),
                WsMessage::Pong(b"mid".to_vec().into()),
                WsMessage::Close(Some(CloseFrame {
                    code: CloseCode::from(4008),
                    reason: "".into()
                }))
            ]
        );
    }

    #[tokio::test]
    async fn text_that_is_not_utf8_is_a_protocol_error() {
        let (client, server, request) = pair().await;
        let server = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(server).await.unwrap();
            let bad = WsFrame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
            ws.send(WsMessage::Frame(bad)).await.unwrap();
            ws
        });
        let mut stream = EventStream::upgrade(client, &request).await.unwrap();
        match stream.next().await {
            Some(Err(e @ StreamError::Protocol(_))) => assert_eq!(e.short(), "protocol"),
            other => panic!("unexpected {other:?}"),
        }
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_refused_upgrade_hands_back_status_retry_after_and_body() {
        let (client, mut server, request) = pair().await;
        let body = br#"{"error":{"code":"busy","message":"full","retry_after_ms":1500}}"#;
        tokio::spawn(async move {
            let mut head = vec![0u8; 4096];
            let _ = server.read(&mut head).await.unwrap();
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-type: \
                 application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            // Head and body in two writes: the client waits for the body.
            server.write_all(answer.as_bytes()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            server.write_all(body).await.unwrap();
        });
        match EventStream::upgrade(client, &request).await {
            Err(UpgradeError::Refused(r)) => {
                assert_eq!(r.status, 503);
                assert_eq!(r.retry_after.as_deref(), Some("2"));
                assert_eq!(r.body, body);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_upgrade_with_the_wrong_accept_key_fails() {
        let (client, mut server, request) = pair().await;
        tokio::spawn(async move {
            let mut head = vec![0u8; 4096];
            let _ = server.read(&mut head).await.unwrap();
            let answer = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: \
                          upgrade\r\nsec-websocket-accept: bm90IHRoZSBrZXk=\r\n\r\n";
            server.write_all(answer.as_bytes()).await.unwrap();
        });
        match EventStream::upgrade(client, &request).await {
            Err(UpgradeError::Failed(why)) => assert!(why.contains("Accept"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_frame_carries_the_time_it_arrived_not_the_time_it_was_read() {
        let (client, server, request) = pair().await;
        let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(server).await.unwrap();
            while go_rx.recv().await.is_some() {
                ws.send(WsMessage::text("tick")).await.unwrap();
            }
        });
        let mut stream = EventStream::upgrade(client, &request).await.unwrap();
        // The host's stamping may start a moment after it was asked for.
        let mut stamped = false;
        for _ in 0..100 {
            go_tx.send(()).await.unwrap();
            match stream.next().await {
                Some(Ok(Frame::Text { arrived_ns, .. })) if arrived_ns != 0 => {
                    stamped = true;
                    break;
                }
                Some(Ok(Frame::Text { .. })) => {}
                other => panic!("unexpected {other:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(stamped, "no receive stamp within 2 s");
        let before = stamp::unix_ns();
        go_tx.send(()).await.unwrap();
        // The frame waits in the socket while the reader is busy elsewhere.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let Some(Ok(Frame::Text { text, arrived_ns })) = stream.next().await else {
            panic!("no frame");
        };
        let read_at = stamp::unix_ns();
        assert_eq!(text, "tick");
        assert!(
            arrived_ns >= before,
            "stamped {arrived_ns}, sent after {before}"
        );
        assert!(
            read_at - arrived_ns >= 250_000_000,
            "the stamp is the arrival, {} ms before the read",
            (read_at - arrived_ns) / 1_000_000
        );
        drop(go_tx);
        server.await.unwrap();
    }

    #[test]
    fn headers_are_parsed_and_a_servers_bad_frames_refused() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(
            parse_header(&[0x81, 5]).unwrap(),
            Some(Header {
                fin: true,
                opcode: OP_TEXT,
                header_len: 2,
                len: 5
            })
        );
        assert_eq!(parse_header(&[0x01, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x01, 126, 1, 0]).unwrap().unwrap().len, 256);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long).unwrap().unwrap().header_len, 10);
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(MAX_FRAME as u64 + 1).to_be_bytes());
        assert!(matches!(parse_header(&huge), Err(StreamError::TooBig(_))));
        // Masked, reserved bits, a fragmented ping, a long close.
        let bad_frames: [&[u8]; 4] = [&[0x81, 0x85], &[0xC1, 5], &[0x09, 0], &[0x88, 126, 0, 126]];
        for bad in bad_frames {
            assert!(
                matches!(parse_header(bad), Err(StreamError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        queue_frame(&mut out, OP_PONG, b"beat");
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x80 | 4);
        let mask = &out[2..6];
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"beat");
    }
}
