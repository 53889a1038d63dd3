//! The link between a node and one of its stream workers: a Unix stream
//! socket carrying length-prefixed frames, and the client sockets handed
//! over with `SCM_RIGHTS`.
//!
//! A frame is `len: u32` (of what follows), `kind: u8`, `channel: u64`, then
//! the payload, all little-endian. A channel is one event stream. An `OPEN`
//! frame travels in the same `sendmsg` as the client socket it opens, so the
//! receiver finds the socket among the descriptors it has received by the
//! time it parses the frame (descriptors arrive with the first byte of the
//! message that carried them, in order).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Frame kinds, node to worker.
pub mod to_worker {
    /// Open a channel on the socket sent with this frame.
    pub const OPEN: u8 = 1;
    /// Send the payload (UTF-8) as a text frame.
    pub const TEXT: u8 = 2;
    /// Send a ping.
    pub const PING: u8 = 3;
    /// Close with `code: u16` and the rest of the payload as the reason,
    /// then drop the socket.
    pub const CLOSE: u8 = 4;
    /// Drop the socket now.
    pub const END: u8 = 5;
}

/// Frame kinds, worker to node.
pub mod to_node {
    /// `n: u32` more frames of the channel were written to its socket.
    pub const ACK: u8 = 1;
    pub const PING: u8 = 2;
    pub const PONG: u8 = 3;
    /// The client started the closing handshake; the worker replied and
    /// dropped the socket.
    pub const CLOSED: u8 = 4;
    /// The client sent a data frame.
    pub const DATA: u8 = 5;
    /// The client sent a frame over the size limit.
    pub const TOO_BIG: u8 = 6;
    /// The socket is gone (reset, timed out, or the worker could not open it).
    pub const GONE: u8 = 7;
}

/// Bytes before the payload: kind and channel.
const HEAD: usize = 1 + 8;
/// The length of a frame without payload, length prefix included.
pub const EMPTY_FRAME: usize = 4 + HEAD;
/// Largest frame accepted from the other side.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Appends a frame to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, channel: u64, payload: &[u8]) {
    let len = (HEAD + payload.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&channel.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Calls `each(kind, channel, payload)` for every complete frame at the
/// front of `buf`, in order, then removes them; an incomplete frame stays
/// for the next read.
pub fn for_each_frame(buf: &mut Vec<u8>, mut each: impl FnMut(u8, u64, &[u8])) -> io::Result<()> {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if !(HEAD..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad link frame length {len}"),
            ));
        }
        if buf.len() - at - 4 < len {
            break;
        }
        let body = &buf[at + 4..at + 4 + len];
        let channel = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        each(body[0], channel, &body[HEAD..]);
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(())
}

/// Writes all of `bytes`, attaching `fd` to the first byte.
pub async fn send_with_fd(link: &UnixStream, bytes: &[u8], fd: &OwnedFd) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let sent = loop {
        link.writable().await?;
        let fds = [fd.as_fd()];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let result = link.try_io(Interest::WRITABLE, || {
            rustix::net::sendmsg(
                link,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        });
        match result {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    write_all(link, &bytes[sent..]).await
}

/// Writes all of `bytes`.
pub async fn write_all(link: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        link.writable().await?;
        match link.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads once into `buf`, moving received descriptors to `fds`. Returns the
/// number of bytes read (0 at the end of the stream).
pub async fn read_with_fds(
    link: &UnixStream,
    buf: &mut Vec<u8>,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut chunk = [0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    loop {
        link.readable().await?;
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result = link.try_io(Interest::READABLE, || {
            rustix::net::recvmsg(
                link,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)
        });
        match result {
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                buf.extend_from_slice(&chunk[..msg.bytes]);
                return Ok(msg.bytes);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames at the front of `buf`, as (kind, channel, payload).
    fn decode(buf: &mut Vec<u8>) -> io::Result<Vec<(u8, u64, Vec<u8>)>> {
        let mut frames = Vec::new();
        for_each_frame(buf, |k, c, p| frames.push((k, c, p.to_vec())))?;
        Ok(frames)
    }

    #[test]
    fn frames_round_trip_and_wait_for_their_last_byte() {
        let mut out = Vec::new();
        encode(&mut out, to_worker::TEXT, 7, b"hello");
        encode(&mut out, to_worker::END, u64::MAX, b"");
        let mut buf = out[..out.len() - 3].to_vec();
        let first = decode(&mut buf).unwrap();
        assert_eq!(first, vec![(to_worker::TEXT, 7, b"hello".to_vec())]);
        buf.extend_from_slice(&out[out.len() - 3..]);
        let second = decode(&mut buf).unwrap();
        assert_eq!(second, vec![(to_worker::END, u64::MAX, Vec::new())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_bad_length_is_an_error() {
        let mut buf = 3u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 8]);
        assert!(decode(&mut buf).is_err());
    }

    #[tokio::test]
    async fn a_socket_travels_with_its_frame() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = UnixStream::pair().unwrap();
        let (mut x, y) = UnixStream::pair().unwrap();
        let mut frame = Vec::new();
        encode(&mut frame, to_worker::OPEN, 1, b"");
        send_with_fd(&a, &frame, &OwnedFd::from(y.into_std().unwrap()))
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut fds = VecDeque::new();
        while buf.len() < frame.len() {
            read_with_fds(&b, &mut buf, &mut fds).await.unwrap();
        }
        assert_eq!(decode(&mut buf).unwrap()[0].0, to_worker::OPEN);
        let got = fds.pop_front().expect("a descriptor came with the frame");
        let mut got = UnixStream::from_std(std::os::unix::net::UnixStream::from(got)).unwrap();
        got.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        x.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
    }
}
