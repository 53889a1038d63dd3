//! The store contract: one suite, run against both implementations of the
//! `Store` trait, SQLite (one node) and PostgreSQL (shared by several nodes;
//! here two store instances on one database stand for two nodes).
//!
//! Each PostgreSQL case starts its own private cluster (pgcluster). Without
//! PostgreSQL binaries the PostgreSQL cases fail under CI and are skipped,
//! loudly, elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pchat_protocol::{Invitations, MessageKind, Privacy, RoomType};
use prometheus_client::metrics::gauge::Gauge;
use reference_server::domain::{Acl, CategoryId, Entry, RoomId, RoomRec, UserId, UserRec};
use reference_server::store::postgres::{DirEntry, Feed, PgOptions, PgStore};
use reference_server::store::sqlite::{SqliteOptions, SqliteStore};
use reference_server::store::{
    Appended, Change, ComplianceEvent, IdKind, InvitationRec, MessageFilter, NewMessage, Pump,
    SearchQuery, Slice, Store, StoredMessage,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// One store instance ("node") and what it publishes.
struct Node {
    store: Arc<dyn Store>,
    commits: UnboundedReceiver<StoredMessage>,
    directory: Option<UnboundedReceiver<DirEntry>>,
}

/// A backend under test: opens nodes on one shared database.
enum Backend {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        cluster: pgcluster::Cluster,
        nodes: std::sync::atomic::AtomicUsize,
    },
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// None (after saying why) when PostgreSQL cannot run here and this is not CI.
    fn postgres() -> Option<Backend> {
        if let Err(why) = pgcluster::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to start PostgreSQL: {why}"
            );
            eprintln!("SKIPPED (PostgreSQL store): {why}");
            return None;
        }
        let cluster = pgcluster::Cluster::start().expect("start a private PostgreSQL");
        cluster.create_database("chat").unwrap();
        cluster.create_database("compliance").unwrap();
        Some(Backend::Postgres {
            cluster,
            nodes: 0.into(),
        })
    }

    /// Whether several nodes can share this backend.
    fn shared(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }

    async fn open(&self) -> Node {
        let (commits_tx, commits) = unbounded_channel();
        match self {
            Backend::Sqlite { dir } => {
                let store = SqliteStore::open(
                    SqliteOptions::in_dir(dir.path()),
                    commits_tx,
                    Gauge::default(),
                    Gauge::default(),
                )
                .expect("open sqlite");
                Node {
                    store: Arc::new(store),
                    commits,
                    directory: None,
                }
            }
            Backend::Postgres { cluster, nodes } => {
                let n = nodes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (dir_tx, directory) = unbounded_channel();
                let store = PgStore::open(
                    PgOptions {
                        url: cluster.url("chat"),
                        compliance_url: cluster.url("compliance"),
                        connections: 8,
                        node: format!("node{n}"),
                    },
                    Feed {
                        commits: commits_tx,
                        directory: dir_tx,
                        bus: unbounded_channel().0,
                        publish_pending: Gauge::default(),
                    },
                    Gauge::default(),
                )
                .await
                .expect("open postgres");
                Node {
                    store,
                    commits,
                    directory: Some(directory),
                }
            }
        }
    }
}

/// Generates one test per backend for a case `async fn(&Backend)`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(b) = super::Backend::postgres() {
                        super::$case(&b).await;
                    }
                }
            )*
        }
    };
}

contract!(
    sequences_are_dense_under_concurrent_appends,
    a_retry_returns_the_original_and_a_changed_retry_conflicts,
    committed_messages_are_published_in_order_on_every_node,
    acknowledged_messages_survive_reopening,
    history_slices_and_search,
    directory_changes_round_trip_and_reach_every_node,
    id_reservations_never_overlap,
    invitations_and_followed_rooms,
    clearing_and_removing_messages,
    compliance_events_land_exactly_once,
    a_batch_of_compliance_events_lands_whole_and_in_order,
);

fn room(id: i64, name: &str) -> RoomRec {
    RoomRec {
        id: RoomId(id),
        name: name.into(),
        description: String::new(),
        category: CategoryId(1),
        room_type: RoomType::Normal,
        privacy: Privacy::Open,
        invitations: Invitations::Inherit,
        addin: None,
        disabled: false,
        managers: Acl::from_entries([Entry::User(UserId(1))]),
        presenters: Acl::default(),
        members: Acl::from_entries([Entry::User(UserId(2))]),
        created_at: 1,
    }
}

fn msg(room: RoomId, sender: &str, text: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        room,
        sender: sender.into(),
        kind: MessageKind::Normal,
        text: text.into(),
        title: None,
        client_key: key.map(str::to_owned),
        keep_text: true,
        compliance_room_name: None,
    }
}

async fn with_rooms(node: &Node, ids: &[i64]) {
    let changes = ids
        .iter()
        .map(|id| Change::PutRoom(room(*id, &format!("room{id}"))))
        .collect();
    node.store.apply(changes, Vec::new()).await.unwrap();
}

fn new(a: Appended) -> StoredMessage {
    match a {
        Appended::New(m) => m,
        other => panic!("expected a new message, got {other:?}"),
    }
}

/// Receives `n` published messages (or fails after a timeout).
async fn receive(rx: &mut UnboundedReceiver<StoredMessage>, n: usize) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            other => panic!("published {} of {n} messages, then {other:?}", out.len()),
        }
    }
    out
}

async fn sequences_are_dense_under_concurrent_appends(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1]).await;
    // Two nodes when the backend can share, each with several writers.
    let other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let stores: Vec<Arc<dyn Store>> = std::iter::once(a.store.clone())
        .chain(other.iter().map(|n| n.store.clone()))
        .collect();
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    let m = msg(
                        RoomId(1),
                        &format!("u{s}{w}"),
                        &format!("{s}-{w}-{i}"),
                        None,
                    );
                    seqs.push(new(store.append(m).await.unwrap()).seq);
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's sequence numbers go up: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "dense, starting at 1, never repeated");
    let (stored, more) = a
        .store
        .messages(RoomId(1), Slice::After(0), 500)
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), expected);
}

async fn a_retry_returns_the_original_and_a_changed_retry_conflicts(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1]).await;
    let first = new(a
        .store
        .append(msg(RoomId(1), "alice", "hello", Some("k1")))
        .await
        .unwrap());
    let again = a
        .store
        .append(msg(RoomId(1), "alice", "hello", Some("k1")))
        .await
        .unwrap();
    assert_eq!(again, Appended::Existing(first.clone()));
    let changed = a
        .store
        .append(msg(RoomId(1), "alice", "changed", Some("k1")))
        .await
        .unwrap();
    assert_eq!(changed, Appended::Conflict);
    // The same key from another sender is another message.
    let bob = new(a
        .store
        .append(msg(RoomId(1), "bob", "hello", Some("k1")))
        .await
        .unwrap());
    assert_eq!(bob.seq, first.seq + 1, "a returned retry used no number");
    // Retries racing (on two nodes where the backend is shared): one new message.
    let other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = match (&other, i % 2) {
            (Some(o), 1) => o.store.clone(),
            _ => a.store.clone(),
        };
        tasks.push(tokio::spawn(async move {
            store
                .append(msg(RoomId(1), "carol", "racing", Some("k2")))
                .await
                .unwrap()
        }));
    }
    let mut fresh = 0;
    let mut seqs = HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Appended::New(m) => {
                fresh += 1;
                seqs.insert(m.seq);
            }
            Appended::Existing(m) => {
                seqs.insert(m.seq);
            }
            Appended::Conflict => panic!("identical retries must not conflict"),
        }
    }
    assert_eq!(fresh, 1, "exactly one of the racing retries is new");
    assert_eq!(seqs.len(), 1, "every retry answers with the same message");
    let (all, _) = a
        .store
        .messages(RoomId(1), Slice::After(0), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
}

async fn committed_messages_are_published_in_order_on_every_node(b: &Backend) {
    let mut a = b.open().await;
    with_rooms(&a, &[1, 2]).await;
    let mut other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = match (&other, w % 2) {
            (Some(o), 1) => o.store.clone(),
            _ => a.store.clone(),
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let r = RoomId(1 + (i % 2));
                store
                    .append(msg(r, &format!("w{w}"), &format!("{w}:{i}"), None))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut nodes = vec![&mut a.commits];
    if let Some(o) = other.as_mut() {
        nodes.push(&mut o.commits);
    }
    let mut seen: Vec<BTreeMap<i64, Vec<(u64, String)>>> = Vec::new();
    for rx in nodes {
        let got = receive(rx, 80).await;
        let mut per_room: BTreeMap<i64, Vec<(u64, String)>> = BTreeMap::new();
        for m in got {
            per_room
                .entry(m.room.0)
                .or_default()
                .push((m.seq, m.text.unwrap_or_default()));
        }
        for (room, list) in &per_room {
            let seqs: Vec<u64> = list.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=40).collect::<Vec<_>>(),
                "room {room}: every message once, in sequence order"
            );
        }
        seen.push(per_room);
    }
    if seen.len() == 2 {
        assert_eq!(seen[0], seen[1], "both nodes publish the same messages");
    }
}

async fn acknowledged_messages_survive_reopening(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1]).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        acked.push(new(a
            .store
            .append(msg(
                RoomId(1),
                "alice",
                &format!("m{i}"),
                Some(&format!("k{i}")),
            ))
            .await
            .unwrap()));
    }
    a.store.close().await.unwrap();
    drop(a);
    let again = b.open().await;
    let (stored, _) = again
        .store
        .messages(RoomId(1), Slice::After(0), 100)
        .await
        .unwrap();
    assert_eq!(stored, acked);
    let snap = again.store.load().await.unwrap();
    assert!(snap.last_seqs.contains(&(RoomId(1), 30)));
    // The idempotency keys survive too.
    let retry = again
        .store
        .append(msg(RoomId(1), "alice", "m7", Some("k7")))
        .await
        .unwrap();
    assert_eq!(retry, Appended::Existing(acked[7].clone()));
}

async fn history_slices_and_search(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1, 2]).await;
    for i in 1..=10 {
        let text = if i % 3 == 0 {
            format!("Release {i} is ÜBER ready")
        } else {
            format!("note {i} 100% done_")
        };
        a.store
            .append(msg(
                RoomId(1),
                if i % 2 == 0 { "bob" } else { "alice" },
                &text,
                None,
            ))
            .await
            .unwrap();
    }
    a.store
        .append(msg(RoomId(2), "carol", "release elsewhere", None))
        .await
        .unwrap();
    let seqs = |v: &[StoredMessage]| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    let (latest, more) = a.store.messages(RoomId(1), Slice::Latest, 3).await.unwrap();
    assert_eq!((seqs(&latest), more), (vec![8, 9, 10], true));
    let (before, more) = a
        .store
        .messages(RoomId(1), Slice::Before(3), 5)
        .await
        .unwrap();
    assert_eq!((seqs(&before), more), (vec![1, 2], false));
    let (after, more) = a
        .store
        .messages(RoomId(1), Slice::After(7), 2)
        .await
        .unwrap();
    assert_eq!((seqs(&after), more), (vec![8, 9], true));
    let (between, _) = a
        .store
        .messages(RoomId(1), Slice::Between(2, 5), 50)
        .await
        .unwrap();
    assert_eq!(seqs(&between), vec![3, 4, 5]);

    let search = |terms: &[&str], case_sensitive: bool, author: Option<&str>| SearchQuery {
        rooms: vec![RoomId(1), RoomId(2)],
        terms: terms.iter().map(|t| t.to_string()).collect(),
        case_sensitive,
        author: author.map(str::to_owned),
        from_ms: None,
        to_ms: None,
        limit: 50,
    };
    let (found, _) = a
        .store
        .search(search(&["release", "über"], false, None))
        .await
        .unwrap();
    let mut got: Vec<(i64, u64)> = found.iter().map(|m| (m.room.0, m.seq)).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![(1, 3), (1, 6), (1, 9)],
        "Unicode case-insensitive, every term"
    );
    let (found, _) = a
        .store
        .search(search(&["Release"], true, None))
        .await
        .unwrap();
    assert_eq!(
        found.len(),
        3,
        "case-sensitive leaves out 'release elsewhere'"
    );
    let (found, _) = a
        .store
        .search(search(&["100%", "_"], false, Some("bob")))
        .await
        .unwrap();
    let mut got = seqs(&found);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![2, 4, 8, 10],
        "wildcard characters are literal; author filters"
    );
    let (found, more) = a
        .store
        .search(SearchQuery {
            limit: 2,
            ..search(&["note"], false, None)
        })
        .await
        .unwrap();
    assert_eq!((found.len(), more), (2, true));
    let (found, _) = a
        .store
        .search(SearchQuery {
            rooms: vec![RoomId(2)],
            ..search(&["release"], false, None)
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "only the rooms asked for");
}

async fn directory_changes_round_trip_and_reach_every_node(b: &Backend) {
    let mut a = b.open().await;
    let mut other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let user = UserRec {
        id: UserId(7),
        name: "alice".into(),
        display_name: "Alice".into(),
        password_hash: None,
        policy: None,
        admin: false,
        disabled: false,
    };
    let r = room(3, "ops");
    let p1 = a
        .store
        .apply(
            vec![Change::PutUser(user.clone()), Change::PutRoom(r.clone())],
            Vec::new(),
        )
        .await
        .unwrap();
    let p2 = a
        .store
        .apply(
            vec![
                Change::PutPolicy("global".into(), true),
                Change::PutSetting("service".into(), "{}".into()),
            ],
            Vec::new(),
        )
        .await
        .unwrap();
    let snap = b.open().await.store.load().await.unwrap();
    assert_eq!(snap.users, vec![user.clone()]);
    assert_eq!(snap.rooms, vec![r.clone()]);
    assert_eq!(snap.policies, vec![("global".to_string(), true)]);
    assert_eq!(
        snap.settings,
        vec![("service".to_string(), "{}".to_string())]
    );
    if b.shared() {
        // A shared store logs the changes; every node replays them in order.
        let (p1, p2) = (p1.expect("logged"), p2.expect("logged"));
        assert!(p1 < p2);
        assert_eq!(snap.dir_position, Some(p2));
        for node in [Some(&mut a), other.as_mut()].into_iter().flatten() {
            let rx = node.directory.as_mut().unwrap();
            let e1 = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            let e2 = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((e1.id, e2.id), (p1, p2));
            assert!(
                matches!(&e1.changes[..], [Change::PutUser(u), Change::PutRoom(_)] if *u == user)
            );
        }
    } else {
        assert_eq!((p1, p2), (None, None));
    }
    a.store
        .apply(vec![Change::DeleteRoom(RoomId(3))], Vec::new())
        .await
        .unwrap();
    let snap = a.store.load().await.unwrap();
    assert!(snap.rooms.is_empty());
}

async fn id_reservations_never_overlap(b: &Backend) {
    let a = b.open().await;
    let other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = match (&other, i % 2) {
            (Some(o), 1) => o.store.clone(),
            _ => a.store.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let first = store.reserve_ids(IdKind::Room, 10).await.unwrap();
            (first..first + 10).collect::<Vec<i64>>()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), 80, "no id handed out twice");
    assert!(all.iter().all(|id| *id > 0));
}

async fn invitations_and_followed_rooms(b: &Backend) {
    let a = b.open().await;
    let inv = |room: i64, at: i64| InvitationRec {
        user: UserId(5),
        room: RoomId(room),
        invited_by: "mgr".into(),
        at_ms: at,
    };
    a.store
        .add_invitations(vec![inv(1, 10), inv(2, 20)])
        .await
        .unwrap();
    assert_eq!(
        a.store.take_invitations(UserId(5)).await.unwrap(),
        vec![inv(1, 10), inv(2, 20)]
    );
    assert!(
        a.store
            .take_invitations(UserId(5))
            .await
            .unwrap()
            .is_empty(),
        "taken once"
    );
    a.store
        .set_followed(UserId(5), RoomId(9), true)
        .await
        .unwrap();
    a.store
        .set_followed(UserId(5), RoomId(4), true)
        .await
        .unwrap();
    a.store
        .set_followed(UserId(5), RoomId(4), true)
        .await
        .unwrap();
    assert_eq!(
        a.store.followed(UserId(5)).await.unwrap(),
        vec![RoomId(4), RoomId(9)]
    );
    a.store
        .set_followed(UserId(5), RoomId(9), false)
        .await
        .unwrap();
    assert_eq!(a.store.followed(UserId(5)).await.unwrap(), vec![RoomId(4)]);
}

fn audit(kind: &'static str) -> ComplianceEvent {
    ComplianceEvent {
        kind,
        at_ms: 1,
        room: Some((RoomId(1), "room1".into())),
        user: "admin".into(),
        seq: None,
        text: None,
        detail: None,
    }
}

/// One write of many events (how the participant recorder writes a burst
/// of joins): every field, set or empty, comes back as written, in the
/// batch's order, ahead of a later write's events.
async fn a_batch_of_compliance_events_lands_whole_and_in_order(b: &Backend) {
    let a = b.open().await;
    let batch: Vec<ComplianceEvent> = (0..1_200)
        .map(|i| ComplianceEvent {
            kind: ["JOIN", "PART", "BACKCHAT"][i % 3],
            at_ms: 1_000 + i as i64,
            room: (i % 4 != 0).then(|| (RoomId(i as i64 % 7 + 1), format!("room {i}"))),
            user: format!("user{i}"),
            seq: (i % 5 == 0).then_some(i as u64),
            text: (i % 6 == 0).then(|| format!("text {i} \u{e9}")),
            detail: (i % 2 == 0).then(|| format!("detail {i}")),
        })
        .collect();
    a.store.record(batch.clone()).await.unwrap();
    let later = ComplianceEvent {
        user: "later".into(),
        ..audit("JOIN")
    };
    a.store.record(vec![later.clone()]).await.unwrap();
    while a.store.pump_compliance(Pump::All).await.unwrap() > 0 {}
    let records = a.store.compliance_pending(10_000).await.unwrap();
    let got: Vec<ComplianceEvent> = records.iter().map(|r| r.event.clone()).collect();
    let mut want = batch;
    want.push(later);
    assert_eq!(got.len(), want.len(), "every event of the batch lands once");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "event {i} differs");
    }
    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids follow the order");
}

async fn clearing_and_removing_messages(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1]).await;
    for (who, text) in [
        ("alice", "keep me"),
        ("bob", "secret plan"),
        ("bob", "Secret too"),
        ("alice", "fine"),
    ] {
        a.store
            .append(msg(RoomId(1), who, text, None))
            .await
            .unwrap();
    }
    let removed = a
        .store
        .remove_messages(
            RoomId(1),
            MessageFilter {
                author: Some("bob".into()),
                keywords: vec!["secret".into()],
                ..Default::default()
            },
            None,
            audit("ADMIN"),
        )
        .await
        .unwrap();
    assert_eq!(removed, vec![2, 3]);
    let replaced = a
        .store
        .remove_messages(
            RoomId(1),
            MessageFilter {
                keywords: vec!["fine".into()],
                ..Default::default()
            },
            Some("[removed by an administrator]".into()),
            audit("ADMIN"),
        )
        .await
        .unwrap();
    assert_eq!(replaced, vec![4]);
    let (left, _) = a
        .store
        .messages(RoomId(1), Slice::After(0), 50)
        .await
        .unwrap();
    let view: Vec<(u64, Option<String>)> = left.iter().map(|m| (m.seq, m.text.clone())).collect();
    assert_eq!(
        view,
        vec![
            (1, Some("keep me".into())),
            (4, Some("[removed by an administrator]".into()))
        ]
    );
    let cleared = a
        .store
        .clear_history(RoomId(1), i64::MAX, audit("ADMIN"))
        .await
        .unwrap();
    assert_eq!(cleared, 2);
    let (left, _) = a
        .store
        .messages(RoomId(1), Slice::After(0), 50)
        .await
        .unwrap();
    assert!(left.is_empty());
    // The sequence continues after a cleared history.
    let next = new(a
        .store
        .append(msg(RoomId(1), "alice", "again", None))
        .await
        .unwrap());
    assert_eq!(next.seq, 5);
}

async fn compliance_events_land_exactly_once(b: &Backend) {
    let a = b.open().await;
    with_rooms(&a, &[1]).await;
    let other = if b.shared() {
        Some(b.open().await)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = match (&other, w % 2) {
            (Some(o), 1) => o.store.clone(),
            _ => a.store.clone(),
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let mut m = msg(RoomId(1), &format!("w{w}"), &format!("{w}:{i}"), None);
                m.compliance_room_name = Some("room1".into());
                store.append(m).await.unwrap();
                store.record(vec![audit("JOIN")]).await.unwrap();
            }
        }));
    }
    // Pumps run concurrently with the writers and with each other (one
    // for each node), more than once, those of a pool skipping a round
    // while the other is at it.
    let pumpers: Vec<_> = std::iter::once(a.store.clone())
        .chain(other.iter().map(|o| o.store.clone()))
        .map(|store| {
            tokio::spawn(async move {
                for _ in 0..20 {
                    store.pump_compliance(Pump::IfFree).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for p in pumpers {
        p.await.unwrap();
    }
    // Drain what is left; a second full pump moves nothing.
    let mut rounds = 0;
    while a.store.pump_compliance(Pump::All).await.unwrap() > 0 {
        rounds += 1;
        assert!(rounds < 100);
    }
    let records = a.store.compliance_pending(10_000).await.unwrap();
    let chats: Vec<u64> = {
        let mut v: Vec<u64> = records
            .iter()
            .filter(|r| r.event.kind == "CHAT")
            .filter_map(|r| r.event.seq)
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(chats, (1..=60).collect::<Vec<_>>(), "every CHAT once");
    assert_eq!(
        records.iter().filter(|r| r.event.kind == "JOIN").count(),
        60
    );
    let ids: HashSet<i64> = records.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), records.len(), "record ids are unique");
    // Exported records are deleted and never come back, even after another pump.
    a.store
        .compliance_delete(records.iter().map(|r| r.id).collect())
        .await
        .unwrap();
    a.store.pump_compliance(Pump::All).await.unwrap();
    assert!(a.store.compliance_pending(10).await.unwrap().is_empty());
    let mut m = msg(RoomId(1), "late", "after export", None);
    m.compliance_room_name = Some("room1".into());
    a.store.append(m).await.unwrap();
    while a.store.pump_compliance(Pump::All).await.unwrap() > 0 {}
    let late = a.store.compliance_pending(10).await.unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].event.text.as_deref(), Some("after export"));
}

/// A pool's periodic pumps do not queue behind each other: while one node
/// holds the pump's mark, another's `IfFree` pump moves nothing and returns
/// at once; once it is free, the events move, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_skips_its_round_while_another_node_pumps() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres { cluster, .. } = &b else {
        unreachable!()
    };
    let a = b.open().await;
    a.store
        .record(vec![audit("JOIN"), audit("PART")])
        .await
        .unwrap();
    // Another node's pump, in the middle of its round.
    let (mut other, conn) =
        tokio_postgres::connect(&cluster.url("compliance"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let busy = other.transaction().await.unwrap();
    busy.query_one("SELECT xid FROM pumped WHERE one = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let skipped = tokio::time::timeout(
        Duration::from_secs(5),
        a.store.pump_compliance(Pump::IfFree),
    )
    .await
    .expect("the pump waited for the other node's lock");
    assert_eq!(
        skipped.unwrap(),
        0,
        "nothing moves while another node pumps"
    );
    assert!(a.store.compliance_pending(10).await.unwrap().is_empty());
    // A waiting pump moves them as soon as the other round ends.
    let waiting = {
        let store = a.store.clone();
        tokio::spawn(async move { store.pump_compliance(Pump::All).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "Pump::All waits for the lock");
    busy.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap(), 2);
    assert_eq!(a.store.pump_compliance(Pump::IfFree).await.unwrap(), 0);
    let kinds: Vec<String> = a
        .store
        .compliance_pending(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.kind.to_string())
        .collect();
    assert_eq!(kinds, ["JOIN", "PART"]);
}
