//! Lean client sockets: event streams with small buffers, spread over several
//! loopback source addresses, and the process limits that bound them.
//!
//! A stream is a [`crate::ws::EventStream`]: a 1 KiB read buffer that grows
//! only for a long frame, and nothing buffered for writing, so the tens of
//! thousands of streams a sizing run holds cost megabytes, not gigabytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpSocket;

use crate::ws::{EventStream, Refusal, UpgradeError};

/// An event stream as the load generator holds it: its frames carry the
/// kernel's receive stamps ([`crate::stamp`]).
pub type Ws = EventStream;

/// Connections one (source address, destination) pair can hold before the
/// ephemeral port range (32768-60999 here) runs out, with a margin.
pub const PORTS_PER_SOURCE: usize = 25_000;

/// Raises this process's open-file limit to its hard limit and returns
/// (soft, hard) afterwards.
pub fn raise_fd_limit() -> (u64, u64) {
    // Failure leaves the old limit; the caller reports what it got.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0))
}

/// The loopback source address for the `index`-th connection to one
/// destination: 127.0.0.1 for the first [`PORTS_PER_SOURCE`], then
/// 127.0.0.2, and so on. `None` when the destination is not on loopback
/// (the operating system then picks the source).
pub fn source_for(dest: IpAddr, index: usize) -> Option<IpAddr> {
    match dest {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let n = (index / PORTS_PER_SOURCE) as u8;
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n)))
        }
        _ => None,
    }
}

/// Opens the event stream of `endpoint` on the server at `base`
/// (`http://host:port`), from `source` when given.
pub async fn connect_stream(
    base: &str,
    dest: SocketAddr,
    token: &str,
    endpoint: &str,
    resume: &[(u64, u64)],
    rejoin: bool,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let connect = open_stream(base, dest, token, endpoint, resume, rejoin, source);
    match tokio::time::timeout(STREAM_CONNECT_TIMEOUT, connect).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow::Error::new(ConnectTimedOut)),
    }
}

/// How long a stream's connection and WebSocket handshake may take. A
/// handshake whose packets the server's kernel dropped (its accept queue
/// full in a reconnect storm) can otherwise hang for minutes; a client
/// gives up and tries again.
pub const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A stream's connection or handshake took longer than
/// [`STREAM_CONNECT_TIMEOUT`].
#[derive(Debug)]
pub struct ConnectTimedOut;

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream connection not open after {} s",
            STREAM_CONNECT_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for ConnectTimedOut {}

async fn open_stream(
    base: &str,
    dest: SocketAddr,
    token: &str,
    endpoint: &str,
    resume: &[(u64, u64)],
    rejoin: bool,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let request =
        pchat_protocol::client::stream_request(base, Some(token), endpoint, resume, rejoin)?;
    let socket = match dest {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source {
        // Without this, binding to port 0 reserves a port of the source
        // address for every destination: the source could then hold only
        // one range of ephemeral ports in all (lingering closed sockets
        // included). With it, the port is chosen at connect time, unique
        // per (source, destination) pair. Where the option is missing, the
        // stricter reservation stays.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(SocketAddr::new(src, 0))
            .with_context(|| format!("bind source address {src}"))?;
    }
    let tcp = socket
        .connect(dest)
        .await
        .with_context(|| format!("connect to {dest}"))?;
    tcp.set_nodelay(true)?;
    match EventStream::upgrade(tcp, &request).await {
        Ok(ws) => Ok(ws),
        Err(UpgradeError::Refused(r)) => Err(StreamRefused::from(&r).into()),
        Err(UpgradeError::Failed(why)) => Err(anyhow::anyhow!("websocket handshake: {why}")),
    }
}

/// The server answered a stream's upgrade request with an error instead of
/// the upgrade (503 `busy` from an admission gate, 429, ...).
#[derive(Debug)]
pub struct StreamRefused {
    pub status: u16,
    /// The protocol error code of the answer's body, if it had one.
    pub code: Option<String>,
    /// What the answer's `retry_after_ms` (or `Retry-After`) asked for.
    pub retry_after: Option<Duration>,
}

impl From<&Refusal> for StreamRefused {
    fn from(resp: &Refusal) -> StreamRefused {
        let body: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
        let error = body.as_ref().map(|b| &b["error"]);
        let header = resp.retry_after.as_deref();
        StreamRefused {
            status: resp.status,
            code: error.and_then(|e| e["code"].as_str()).map(str::to_owned),
            retry_after: crate::retry::retry_after(
                error.and_then(|e| e["retry_after_ms"].as_u64()),
                header,
            ),
        }
    }
}

impl std::fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream refused: {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StreamRefused {}

/// Resolves `base` (`http://host:port`) to a socket address.
pub async fn resolve(base: &str) -> anyhow::Result<SocketAddr> {
    let hostport = base
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("");
    tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolve {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_move_to_the_next_loopback_address_when_ports_run_out() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(source_for(lo, 0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            source_for(lo, PORTS_PER_SOURCE - 1),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            source_for(lo, PORTS_PER_SOURCE),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(source_for("10.0.0.5".parse().unwrap(), 99_999), None);
    }
}
