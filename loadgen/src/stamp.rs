//! Arrival times from the kernel: when a frame reached the endpoint's
//! socket, not when the load generator got round to reading it.
//!
//! The generator shares the host with what it measures. In a large room's
//! fan-out thousands of its sockets become readable at once, and the last
//! of them is read only after the generator has worked through the others;
//! a delivery measured at that read includes the generator's own queue.
//! With `SO_TIMESTAMPNS` the kernel stamps each received segment (wall
//! clock, nanoseconds) and hands the stamp of the newest segment of a read
//! to `recvmsg`. A frame is then dated by the read that completed it: never
//! earlier than its real arrival (a read that takes several frames gives
//! all of them the newest one's stamp), so the figure errs towards the
//! server's disadvantage, never towards its advantage.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The wall clock in nanoseconds since the Unix epoch, the clock of the
/// kernel's stamps.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Asks the kernel to stamp what `fd` receives.
pub fn enable(fd: &impl AsFd) -> io::Result<()> {
    socket::setsockopt(fd, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

thread_local! {
    /// Room for one stamp's control message, kept for every read of the
    /// thread instead of allocated per read (a fan-out reads thousands of
    /// sockets in a burst).
    static CONTROL: RefCell<Vec<u8>> = RefCell::new(nix::cmsg_space!(nix::sys::time::TimeSpec));
}

/// Reads into `buf` like `recv`. Returns the byte count and, when the
/// socket has stamping enabled, the kernel's receive stamp of the newest
/// segment read (nanoseconds since the Unix epoch).
pub fn recv(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    CONTROL.with_borrow_mut(|space| {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_fd().as_raw_fd(),
            &mut iov,
            Some(space),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut stamp = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                let ns = (ts.tv_sec() as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(ts.tv_nsec() as u64);
                stamp = Some(ns);
            }
        }
        Ok((msg.bytes, stamp))
    })
}

/// A TCP stream whose reads keep the kernel's receive stamp of the newest
/// segment read so far ([`Stamped::arrived_ns`]).
#[derive(Debug)]
pub struct Stamped {
    tcp: TcpStream,
    /// Nanoseconds since the Unix epoch; 0 until a stamped read.
    arrived_ns: u64,
}

impl Stamped {
    /// Wraps `tcp` and enables stamping on it. Fails where the kernel has
    /// no receive stamps for TCP.
    pub fn new(tcp: TcpStream) -> io::Result<Stamped> {
        enable(&tcp)?;
        Ok(Stamped { tcp, arrived_ns: 0 })
    }

    /// When the newest segment of the last read reached the socket, in
    /// nanoseconds since the Unix epoch; 0 when that read had no stamp (the
    /// kernel turns stamping on for the whole host a moment after the first
    /// socket asks, so the first segments may have none).
    pub fn arrived_ns(&self) -> u64 {
        self.arrived_ns
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.tcp.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            let unfilled = out.initialize_unfilled();
            let got = this
                .tcp
                .try_io(Interest::READABLE, || recv(&this.tcp, unfilled));
            match got {
                Ok((n, stamp)) => {
                    if n > 0 {
                        // A read without a stamp leaves the arrival
                        // unknown, not the previous read's (earlier) one.
                        this.arrived_ns = stamp.unwrap_or(0);
                    }
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_read_carries_the_time_its_bytes_arrived_not_the_time_it_ran() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut reader = Stamped::new(client.unwrap()).unwrap();
        let (mut writer, _) = server.unwrap();
        assert_eq!(reader.arrived_ns(), 0);
        let mut buf = [0u8; 16];
        // The host's stamping may start a moment after it was asked for.
        for _ in 0..100 {
            writer.write_all(b"x").await.unwrap();
            assert_eq!(reader.read(&mut buf).await.unwrap(), 1);
            if reader.arrived_ns() != 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_ne!(reader.arrived_ns(), 0, "no receive stamp within 2 s");
        let before = unix_ns();
        writer.write_all(b"first").await.unwrap();
        // The bytes wait in the socket while the reader is busy elsewhere.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let n = reader.read(&mut buf).await.unwrap();
        let read_at = unix_ns();
        assert_eq!(&buf[..n], b"first");
        let arrived = reader.arrived_ns();
        assert!(arrived >= before, "stamped {arrived}, sent after {before}");
        assert!(
            read_at - arrived >= 250_000_000,
            "the stamp is the arrival, {} ms before the read",
            (read_at - arrived) / 1_000_000
        );
        // Writes pass through.
        reader.write_all(b"back").await.unwrap();
        let n = writer.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
    }
}
