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

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};

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
