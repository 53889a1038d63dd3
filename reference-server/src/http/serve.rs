//! The accept loop: one hyper connection per accepted socket, with a bound
//! on how long a connection may take to send a request head.
//!
//! `axum::serve` builds its hyper connections without a timer, so hyper's
//! header read timeout never runs there: a client that connects and sends
//! nothing, or trickles a head a byte at a time, or keeps an idle
//! connection open between requests, held its socket for ever. Here the
//! timeout (`limits.request_head_timeout_s`) closes such a connection. It
//! runs only while hyper waits for a request head, not while a request is
//! answered, and an upgraded stream has left hyper (its heartbeat bounds
//! it, PC-9.6a).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::SocketHandle;

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// waits for the connections being answered (hyper closes idle ones).
///
/// `keep_fd`: each request carries a second descriptor of its socket
/// ([`SocketHandle`]), so that a stream can be handed to a worker.
pub async fn run(
    listener: TcpListener,
    router: Router,
    keep_fd: bool,
    head_timeout: Option<Duration>,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    if let Some(t) = head_timeout {
        builder.timer(TokioTimer::new()).header_read_timeout(t);
    }
    // Every connection task holds a receiver; the sender's `closed` is the
    // end of the last one.
    let (tasks, task) = tokio::sync::watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        set_nodelay(&tcp);
        let handle =
            keep_fd.then(|| SocketHandle(tcp.as_fd().try_clone_to_owned().ok().map(Arc::new)));
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            if let Some(h) = &handle {
                req.extensions_mut().insert(ConnectInfo(h.clone()));
            }
            // A router is always ready (axum's `Router::poll_ready`).
            router.clone().call(req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        let task = task.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // Finish the request being answered; an idle
                    // connection closes at once.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(task);
        });
    }
    drop(listener);
    drop(task);
    tasks.closed().await;
}

/// As hyper's and axum's loops do: a failed accept of one connection is
/// that connection's problem; anything else (out of descriptors, most
/// likely) waits a moment, since closing connections will free some.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Events are small and should leave at once: no Nagle delay behind a
/// frame the client has not acknowledged yet.
fn set_nodelay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
