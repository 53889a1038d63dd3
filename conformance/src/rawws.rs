//! Deliberately minimal clients over raw TCP sockets, for the tests that need
//! a client behaving in ways a library will not: a WebSocket client that
//! never answers pings (PC-9.6a) or never reads (PC-9.6c), and an HTTP client
//! that reads the answer to a body it is still sending (PC-3.2a).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A frame as the server sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Ping,
    Pong,
    Close(Option<u16>),
    Other(u8),
}

pub struct RawWs {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// Opens `GET /v1/stream` by hand. `recv_buf` shrinks the socket's receive
/// buffer, so a client that stops reading stalls the server quickly.
pub async fn connect(
    base: &str,
    token: &str,
    endpoint: &str,
    resume: &[(u64, u64)],
    recv_buf: Option<u32>,
) -> anyhow::Result<RawWs> {
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    anyhow::ensure!(
        !authority.contains('/') && !base.starts_with("https"),
        "the raw client speaks plain http only: {base}"
    );
    let addr = tokio::net::lookup_host(&authority)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = recv_buf {
        socket.set_recv_buffer_size(n)?;
    }
    let mut sock = socket.connect(addr).await?;
    let mut path = format!("/v1/stream?endpoint={endpoint}");
    if !resume.is_empty() {
        let list: Vec<String> = resume.iter().map(|(r, s)| format!("{r}:{s}")).collect();
        path.push_str("&resume=");
        path.push_str(&list.join(","));
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "connection closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 101"),
        "no upgrade: {}",
        head.lines().next().unwrap_or("")
    );
    buf.drain(..end);
    Ok(RawWs { sock, buf })
}

impl RawWs {
    async fn fill(&mut self, want: usize) -> std::io::Result<bool> {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }

    /// The next frame, or `None` at end of stream.
    pub async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let opcode = self.buf[0] & 0x0f;
        let masked = self.buf[1] & 0x80 != 0;
        let (len, mut header) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if masked {
            header += 4;
        }
        if !self.fill(header + len).await? {
            return Ok(None);
        }
        let mut payload: Vec<u8> = self.buf[header..header + len].to_vec();
        if masked {
            let key = [
                self.buf[header - 4],
                self.buf[header - 3],
                self.buf[header - 2],
                self.buf[header - 1],
            ];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.buf.drain(..header + len);
        Ok(Some(match opcode {
            1 => Frame::Text(String::from_utf8_lossy(&payload).into_owned()),
            8 => Frame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            9 => Frame::Ping,
            10 => Frame::Pong,
            other => Frame::Other(other),
        }))
    }
}

/// One HTTP/1.1 request over a raw socket, reading the answer while the body
/// is still being written. A server may refuse an oversized body (413) before
/// reading it and close the connection; a client that writes first and reads
/// afterwards then sees a reset instead of the answer.
pub async fn http_request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    anyhow::ensure!(!base.starts_with("https"), "plain http only: {base}");
    let sock = TcpStream::connect(&authority).await?;
    let (mut rd, mut wr) = sock.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await?;
    writer.abort();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer ({} bytes)", buf.len()))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    let mut map = reqwest::header::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            ) {
                map.append(k, v);
            }
        }
    }
    Ok((status, map, buf[end + 4..].to_vec()))
}
