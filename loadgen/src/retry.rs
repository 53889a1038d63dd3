//! How a simulated client waits before trying again (docs/protocol.md
//! PC-2.4c): after a 503 `busy` or 429 `rate_limited`, the server's
//! `Retry-After` plus a random extra; after a lost or refused stream, a
//! random delay that doubles with each failed attempt, up to a cap.
//!
//! Every draw comes from a generator seeded from the run's seed and what
//! the client is (its endpoint slot, its operation's index), so the same
//! seed draws the same waits; only the server's answers make runs differ.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The first reconnect of a lost stream waits between half this and this.
pub const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// The longest wait between two reconnect attempts.
pub const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// A refusal without a usable `Retry-After` waits as if it had said this.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A seed for one client's draws: the run's seed mixed with what the
/// client is (`kind` keeps, say, stream slot 7 and operation 7 apart).
pub fn seed(run_seed: u64, kind: u64, index: u64) -> u64 {
    // splitmix64 of the three: close inputs give unrelated seeds.
    let mut z = run_seed
        ^ kind.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED69);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `kind`s of [`seed`].
pub mod kind {
    pub const STREAM: u64 = 1;
    pub const OPERATION: u64 = 2;
    pub const RAMP_JOIN: u64 = 3;
    pub const REJOIN: u64 = 4;
}

/// One client's waits.
pub struct Backoff {
    rng: StdRng,
    /// Failed attempts since the last success.
    failures: u32,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            rng: StdRng::seed_from_u64(seed),
            failures: 0,
        }
    }

    /// The wait before the next reconnect attempt, growing with each call
    /// until [`Backoff::reset`]: half of min(cap, base · 2^failures) plus a
    /// random part of the other half ("equal jitter": never at once, never
    /// in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let full = RECONNECT_BASE
            .saturating_mul(1 << self.failures.min(16))
            .min(RECONNECT_CAP);
        self.failures = self.failures.saturating_add(1);
        self.jitter(full / 2, full)
    }

    /// The wait before the first attempt on another node (the last one is
    /// down): short, without growing.
    pub fn first_delay(&mut self) -> Duration {
        self.jitter(RECONNECT_BASE / 2, RECONNECT_BASE)
    }

    /// Success: the next loss starts from the shortest wait again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait after a refusal that asked for `retry_after`: that long,
    /// plus up to half as long again.
    pub fn after_refusal(&mut self, retry_after: Option<Duration>) -> Duration {
        let at_least = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
        self.jitter(at_least, at_least + at_least / 2)
    }

    /// Uniform in [lo, hi].
    fn jitter(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(self.rng.gen_range(lo..=hi.max(lo)))
    }
}

/// A failed attempt, as a client decides what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// A protocol error code, or `io`, `timeout`, `node_down`,
    /// `http:<status>`, ...
    pub code: String,
    /// What a refusal's `retry_after_ms` or `Retry-After` asked for.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(code: impl Into<String>) -> Failure {
        Failure {
            code: code.into(),
            retry_after: None,
        }
    }

    /// An HTTP answer with an error `status`, its `Retry-After` header and
    /// its body (a protocol error body, or anything else).
    pub fn from_answer(status: u16, header: Option<&str>, body: &[u8]) -> Failure {
        let error = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|b| b["error"].clone());
        Failure {
            code: error
                .as_ref()
                .and_then(|e| e["code"].as_str())
                .map_or_else(|| format!("http:{status}"), str::to_owned),
            retry_after: retry_after(
                error.as_ref().and_then(|e| e["retry_after_ms"].as_u64()),
                header,
            ),
        }
    }

    /// Whether the server refused for now, to be asked again later: 503
    /// `busy` or 429 `rate_limited` (or a bare 503 or 429, as a proxy in
    /// front of a server may answer).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.code.as_str(),
            "busy" | "rate_limited" | "http:503" | "http:429"
        )
    }
}

/// The wait a refusal asks for: the body's `retry_after_ms`, else the
/// `Retry-After` header (whole seconds).
pub fn retry_after(body_ms: Option<u64>, header: Option<&str>) -> Option<Duration> {
    body_ms.map(Duration::from_millis).or_else(|| {
        header
            .and_then(|h| h.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_to_the_cap_with_jitter_and_restart_after_success() {
        let mut b = Backoff::new(seed(7, kind::STREAM, 3));
        let waits: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (i, w) in waits.iter().enumerate() {
            let full = RECONNECT_BASE.saturating_mul(1 << i).min(RECONNECT_CAP);
            assert!(
                *w >= full / 2 && *w <= full,
                "attempt {i}: {w:?} of {full:?}"
            );
        }
        assert!(waits[9] >= RECONNECT_CAP / 2);
        b.reset();
        assert!(b.next_delay() <= RECONNECT_BASE);
    }

    #[test]
    fn refusals_wait_at_least_what_the_server_asked() {
        let mut b = Backoff::new(1);
        for _ in 0..100 {
            let w = b.after_refusal(Some(Duration::from_millis(2_000)));
            assert!(
                w >= Duration::from_secs(2) && w <= Duration::from_secs(3),
                "{w:?}"
            );
        }
        assert!(b.after_refusal(None) >= DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(None, Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after(Some(1_500), Some("2")),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(retry_after(None, Some("soon")), None);
    }

    #[test]
    fn failures_read_the_protocol_error_and_its_wait() {
        let busy = Failure::from_answer(
            503,
            Some("2"),
            br#"{"error":{"code":"busy","message":"m","request_id":"r","retry_after_ms":1700}}"#,
        );
        assert!(busy.is_refusal());
        assert_eq!(busy.code, "busy");
        assert_eq!(busy.retry_after, Some(Duration::from_millis(1_700)));
        let proxy = Failure::from_answer(502, None, b"<html>bad gateway</html>");
        assert_eq!(proxy.code, "http:502");
        assert!(!proxy.is_refusal());
        let bare = Failure::from_answer(429, Some("1"), b"");
        assert!(bare.is_refusal());
        assert_eq!(bare.retry_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_same_seed_draws_the_same_waits_and_clients_differ() {
        let draws = |s: u64| {
            let mut b = Backoff::new(s);
            (0..5).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(
            draws(seed(42, kind::STREAM, 1)),
            draws(seed(42, kind::STREAM, 1))
        );
        assert_ne!(
            draws(seed(42, kind::STREAM, 1)),
            draws(seed(42, kind::STREAM, 2))
        );
        assert_ne!(seed(42, kind::STREAM, 7), seed(42, kind::OPERATION, 7));
    }
}
