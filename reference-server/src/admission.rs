//! Admission control: bounds the work a reconnect storm multiplies
//! (docs/protocol.md PC-2.4b).
//!
//! When a node of a pool dies, its clients come to the survivors at once:
//! each opens its stream and rejoins its rooms with `since`, and every such
//! join reads the missed history from the store. Unbounded, those reads
//! queue in front of the store until every request, posts included, waits
//! behind them. A [`Gate`] bounds one kind of such work: at most
//! `concurrency` run at once, at most `queue` wait for a turn, and none
//! waits longer than `max_wait_ms`. A request that gets no turn is refused
//! with 503 `busy` *before* it changes anything, with a `Retry-After` drawn
//! at random from a range, so that the refused do not all come back in the
//! same second.
//!
//! The gates ([`Admission`]): `join` (joins that read history) and `stream`
//! (stream starts that replay missed messages from the store). A turn is an
//! [`Admitted`] value: the work holds it and the turn ends when it is
//! dropped, so it can be moved into whatever does the work.

use std::sync::Arc;
use std::time::Duration;

use pchat_protocol::ErrorCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{AdmissionConfig, GateConfig};
use crate::error::ApiError;
use crate::metrics::{GateLabels, Metrics};

/// The gates of one node.
pub struct Admission {
    /// Joins that read history from the store.
    pub join: Gate,
    /// Stream starts that replay missed messages from the store.
    pub stream: Gate,
}

impl Admission {
    pub fn new(config: &AdmissionConfig, metrics: &Metrics) -> Admission {
        let lo = config.retry_after_min_ms.max(1);
        let retry_after_ms = (lo, config.retry_after_max_ms.max(lo));
        Admission {
            join: Gate::new(
                "join",
                &config.join,
                retry_after_ms,
                metrics,
                "the server is busy with other joins that read history",
            ),
            stream: Gate::new(
                "stream",
                &config.stream,
                retry_after_ms,
                metrics,
                "the server is busy with other streams that replay missed messages",
            ),
        }
    }
}

/// A bounded number of turns at one kind of work, with a short queue.
pub struct Gate {
    /// The turns; `None` when the gate is off (concurrency 0).
    permits: Option<Arc<Semaphore>>,
    /// Most requests waiting for a turn.
    queue: usize,
    max_wait: Duration,
    /// Range of the `Retry-After` of a refusal, in milliseconds.
    retry_after_ms: (u64, u64),
    /// What a refused client reads.
    message: &'static str,
    refused: Counter,
    /// Requests waiting now. Also the queue's length: the gauge is the one
    /// count, so the metric cannot disagree with the bound it reports.
    waiting: Gauge,
}

/// A turn at gated work. The turn ends when this is dropped; it may be
/// moved into the task that does the work.
#[must_use = "the turn ends when this is dropped"]
#[derive(Debug)]
pub struct Admitted {
    /// Held only to be released on drop; `None` for ungated work.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Admitted {
    /// A turn at work no gate bounds.
    pub fn free() -> Admitted {
        Admitted { _permit: None }
    }
}

impl Gate {
    fn new(
        name: &str,
        config: &GateConfig,
        retry_after_ms: (u64, u64),
        metrics: &Metrics,
        message: &'static str,
    ) -> Gate {
        let labels = GateLabels { gate: name.into() };
        Gate {
            permits: (config.concurrency > 0).then(|| Arc::new(Semaphore::new(config.concurrency))),
            queue: config.queue,
            max_wait: Duration::from_millis(config.max_wait_ms),
            retry_after_ms,
            message,
            // Clones share the family's counter and gauge.
            refused: metrics.admission_refused.get_or_create(&labels).clone(),
            waiting: metrics.admission_waiting.get_or_create(&labels).clone(),
        }
    }

    /// A turn now, or after waiting in the queue; 503 `busy` when the
    /// queue is full or the wait would be longer than the gate allows.
    pub async fn admit(&self) -> Result<Admitted, ApiError> {
        let Some(permits) = &self.permits else {
            return Ok(Admitted { _permit: None });
        };
        // Permits go to waiters first (tokio's semaphore is fair), so this
        // succeeds only when nobody is queued.
        if let Ok(p) = permits.clone().try_acquire_owned() {
            return Ok(Admitted { _permit: Some(p) });
        }
        let queued = Queued::join(&self.waiting);
        if queued.ahead >= self.queue as i64 {
            return Err(self.refuse());
        }
        match tokio::time::timeout(self.max_wait, permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Admitted { _permit: Some(p) }),
            // Timed out; or closed, which this module never does.
            _ => Err(self.refuse()),
        }
    }

    /// The refusal: 503 `busy`, with a `Retry-After` drawn from the range.
    fn refuse(&self) -> ApiError {
        self.refused.inc();
        let (lo, hi) = self.retry_after_ms;
        let mut e = ApiError::new(ErrorCode::Busy, self.message);
        e.retry_after_ms = Some(rand::thread_rng().gen_range(lo..=hi));
        e
    }
}

/// A place in a gate's queue, left when dropped (also when the waiting
/// request is cancelled because its client went away).
struct Queued<'a> {
    waiting: &'a Gauge,
    /// How many were waiting before this one.
    ahead: i64,
}

impl<'a> Queued<'a> {
    fn join(waiting: &'a Gauge) -> Queued<'a> {
        Queued {
            ahead: waiting.inc(),
            waiting,
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.waiting.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(concurrency: usize, queue: usize, max_wait_ms: u64) -> Gate {
        let config = AdmissionConfig {
            join: GateConfig {
                concurrency,
                queue,
                max_wait_ms,
            },
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 3_000,
            ..AdmissionConfig::default()
        };
        Admission::new(&config, &Metrics::new()).join
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_with_a_retry_after_in_range() {
        let g = gate(1, 0, 10_000);
        let held = g.admit().await.unwrap();
        let e = g.admit().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
        let ms = e.retry_after_ms.unwrap();
        assert!((1_000..=3_000).contains(&ms), "{ms}");
        assert_eq!(g.refused.get(), 1);
        drop(held);
        let _again = g.admit().await.unwrap();
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_next_turn_or_is_refused_after_the_wait() {
        let g = Arc::new(gate(1, 1, 50));
        let held = g.admit().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move {
                let turn = g.admit().await;
                let _ = tx.send(());
                turn.map(drop)
            }
        });
        while g.waiting.get() == 0 {
            tokio::task::yield_now().await;
        }
        // The queue holds one: the next is refused without waiting.
        assert!(g.admit().await.is_err());
        drop(held);
        rx.await.unwrap();
        waiter.await.unwrap().unwrap();
        assert_eq!(g.waiting.get(), 0);

        // Nobody lets go of the turn: the queued request is refused once
        // it has waited as long as the gate allows.
        let _held = g.admit().await.unwrap();
        assert!(g.admit().await.is_err());
        assert_eq!(g.waiting.get(), 0);
        assert_eq!(g.refused.get(), 2);
    }

    #[tokio::test]
    async fn concurrency_zero_lifts_the_bound() {
        let g = gate(0, 0, 0);
        let turns: Vec<Admitted> = futures_util::future::join_all((0..100).map(|_| g.admit()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(turns.len(), 100);
    }
}
