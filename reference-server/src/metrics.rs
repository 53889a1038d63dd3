//! Prometheus metrics, served as text at `GET /metrics` (PC-16.2).
//!
//! Counters and gauges are cheap atomics updated where things happen; the
//! registry only reads them when scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Which admission gate (see `admission`): `join` or `stream`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub gate: String,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub sessions: Gauge,
    /// Sessions that lingered without a stream until they expired and left
    /// their rooms (PC-9.1a).
    pub sessions_expired: Counter,
    pub participants: Gauge,
    pub rooms: Gauge,
    pub users: Gauge,
    pub posts: Counter,
    pub deliveries: Counter,
    pub slow_consumer_closes: Counter,
    /// Streams whose socket was handed to a stream worker.
    pub streams_relayed: Counter,
    /// Messages and other events the hub sent straight to a stream worker,
    /// around the connection's task (`hub::Direct`).
    pub direct_deliveries: Counter,
    pub heartbeat_timeouts: Counter,
    pub rate_limited: Counter,
    pub store_pending: Gauge,
    pub publish_pending: Gauge,
    pub compliance_exported: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Family<RouteLabels, Histogram>,
    pub post_ack_seconds: Histogram,
    pub catchup_messages: Counter,
    /// Requests refused with 503 `busy` by an admission gate.
    pub admission_refused: Family<GateLabels, Counter>,
    /// Requests waiting for a turn at an admission gate now.
    pub admission_waiting: Family<GateLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pchat");
        let m = Metrics {
            connections: Gauge::default(),
            sessions: Gauge::default(),
            sessions_expired: Counter::default(),
            participants: Gauge::default(),
            rooms: Gauge::default(),
            users: Gauge::default(),
            posts: Counter::default(),
            deliveries: Counter::default(),
            slow_consumer_closes: Counter::default(),
            streams_relayed: Counter::default(),
            direct_deliveries: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            rate_limited: Counter::default(),
            store_pending: Gauge::default(),
            publish_pending: Gauge::default(),
            compliance_exported: Counter::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            post_ack_seconds: latency_histogram(),
            catchup_messages: Counter::default(),
            admission_refused: Family::default(),
            admission_waiting: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "stream_connections",
            "Event streams connected now",
            m.connections.clone(),
        );
        registry.register(
            "endpoint_sessions",
            "Endpoint sessions alive (connected or lingering)",
            m.sessions.clone(),
        );
        registry.register(
            "endpoint_sessions_expired",
            "Endpoint sessions that lingered without a stream until they expired and left their rooms",
            m.sessions_expired.clone(),
        );
        registry.register(
            "room_participants",
            "Sum over rooms of users present",
            m.participants.clone(),
        );
        registry.register("rooms", "Rooms in the directory", m.rooms.clone());
        registry.register("users", "Users in the directory", m.users.clone());
        registry.register("posts", "Messages acknowledged", m.posts.clone());
        registry.register(
            "deliveries",
            "Events queued to connected streams or sent straight to their stream worker (not those the direct route drops because the endpoint has them or left the room)",
            m.deliveries.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Streams closed because their queue filled",
            m.slow_consumer_closes.clone(),
        );
        registry.register(
            "streams_relayed",
            "Streams whose socket was handed to a stream worker",
            m.streams_relayed.clone(),
        );
        registry.register(
            "direct_deliveries",
            "Events sent straight to a stream worker, around the connection's task",
            m.direct_deliveries.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Streams closed for silence",
            m.heartbeat_timeouts.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "store_queue_depth",
            "Store writes waiting for the writer",
            m.store_pending.clone(),
        );
        registry.register(
            "publish_queue_depth",
            "Committed messages waiting for fan-out",
            m.publish_pending.clone(),
        );
        registry.register(
            "compliance_exported",
            "Compliance records exported",
            m.compliance_exported.clone(),
        );
        registry.register(
            "catchup_messages",
            "Messages sent from the store to fill a stream's gap",
            m.catchup_messages.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.http_seconds.clone(),
        );
        registry.register(
            "post_ack_seconds",
            "Time from a post's arrival to its acknowledgement",
            m.post_ack_seconds.clone(),
        );
        registry.register(
            "admission_refused",
            "Requests refused with 503 busy by an admission gate",
            m.admission_refused.clone(),
        );
        registry.register(
            "admission_waiting",
            "Requests waiting for a turn at an admission gate",
            m.admission_waiting.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
