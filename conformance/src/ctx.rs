//! What a test sees: the server, the run's namespace and accounts, raw HTTP
//! requests recorded into the test's wire transcript, event streams, and the
//! ways a test ends early ([`Flaw`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pchat_protocol::client::{Client, EventStream, StreamItem};
use pchat_protocol::{self as wire, Event};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

/// How a test ended other than passing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// The server broke the clause.
    Fail(String),
    /// Not applicable, or an optional feature the profile declares absent.
    Skip(String),
    /// A precondition could not be set up.
    NotPossible(String),
}

pub type Check = Result<(), Flaw>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fails the test with a message unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::ctx::Flaw::Fail(format!($($arg)+)));
        }
    };
}

/// Fails the test unless the two values are equal, showing both.
#[macro_export]
macro_rules! check_eq {
    ($a:expr, $b:expr, $($arg:tt)+) => {{
        match (&$a, &$b) {
            (a, b) => {
                if a != b {
                    return Err($crate::ctx::Flaw::Fail(format!(
                        "{}: got {:?}, want {:?}", format!($($arg)+), a, b
                    )));
                }
            }
        }
    }};
}

/// Turns any error of a set-up step into [`Flaw::NotPossible`].
pub trait Setup<T> {
    fn setup(self, what: &str) -> Result<T, Flaw>;
}

impl<T, E: std::fmt::Display> Setup<T> for Result<T, E> {
    fn setup(self, what: &str) -> Result<T, Flaw> {
        self.map_err(|e| Flaw::NotPossible(format!("{what}: {e}")))
    }
}

impl<T> Setup<T> for Option<T> {
    fn setup(self, what: &str) -> Result<T, Flaw> {
        self.ok_or_else(|| Flaw::NotPossible(what.to_owned()))
    }
}

/// A hook the vendor supplies: a shell command, or (for library users such as
/// the crate's own tests) a function. Either yields the hook's output.
#[derive(Clone)]
pub enum Hook {
    Command(String),
    Func(Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<String>> + Send + Sync>),
}

impl Hook {
    pub async fn call(&self, namespace: &str) -> anyhow::Result<String> {
        match self {
            Hook::Func(f) => f().await,
            Hook::Command(cmd) => {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("PCHAT_CONFORMANCE_NAMESPACE", namespace)
                    .output()
                    .await?;
                anyhow::ensure!(
                    out.status.success(),
                    "hook `{cmd}` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        }
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Command(c) => write!(f, "Hook::Command({c:?})"),
            Hook::Func(_) => f.write_str("Hook::Func"),
        }
    }
}

/// An account the suite acts as.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub token: String,
    pub password: Option<String>,
}

impl User {
    pub fn principal(&self) -> String {
        format!("user:{}", self.name)
    }
}

/// The accounts and category every test may use.
#[derive(Clone, Debug)]
pub struct World {
    /// An administrator's token, when the profile gives one.
    pub admin: Option<String>,
    /// A creator of `category`.
    pub manager: User,
    pub presenter: User,
    pub member: User,
    /// In the category's scope, on no list.
    pub outsider: User,
    pub category: u64,
    /// A policy the suite created (enabled) for the users it creates.
    pub policy: Option<String>,
}

/// The context of one run, shared by its tests (which run one at a time).
pub struct Ctx {
    pub base: String,
    pub http: reqwest::Client,
    pub ns: String,
    pub w: World,
    pub limits: wire::Limits,
    pub restart: Option<Hook>,
    pub compliance_export: Option<Hook>,
    /// A room homed in another pool, when the profile declares pools.
    pub foreign_room: Option<u64>,
    pub max_wait: Duration,
    pub event_wait: Duration,
    pub seed: u64,
    pub history: crate::history::Params,
    pub out_dir: Option<std::path::PathBuf>,
    counter: AtomicU64,
    transcript: Mutex<Vec<String>>,
    /// Response samples by name, redacted, for snapshot tests.
    shapes: Mutex<BTreeMap<String, Value>>,
    endpoints: Mutex<HashMap<String, u64>>,
    /// The history check's run, shared by the §15 tests.
    pub history_run: tokio::sync::OnceCell<Result<crate::history::Checked, Flaw>>,
}

/// Everything [`Ctx::new`] needs.
pub struct CtxParts {
    pub base: String,
    pub http: reqwest::Client,
    pub ns: String,
    pub w: World,
    pub limits: wire::Limits,
    pub restart: Option<Hook>,
    pub compliance_export: Option<Hook>,
    pub foreign_room: Option<u64>,
    pub max_wait: Duration,
    pub event_wait: Duration,
    pub seed: u64,
    pub history: crate::history::Params,
    pub out_dir: Option<std::path::PathBuf>,
}

impl Ctx {
    pub fn new(p: CtxParts) -> Ctx {
        Ctx {
            base: p.base,
            http: p.http,
            ns: p.ns,
            w: p.w,
            limits: p.limits,
            restart: p.restart,
            compliance_export: p.compliance_export,
            foreign_room: p.foreign_room,
            max_wait: p.max_wait,
            event_wait: p.event_wait,
            seed: p.seed,
            history: p.history,
            out_dir: p.out_dir,
            counter: AtomicU64::new(0),
            transcript: Mutex::new(Vec::new()),
            shapes: Mutex::new(BTreeMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            history_run: tokio::sync::OnceCell::new(),
        }
    }

    /// A name unique in this run: `<namespace>-<tag><n>`.
    pub fn name(&self, tag: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{tag}{n}", self.ns)
    }

    /// An endpoint id for `user`. Suite-created users get fresh ids; the
    /// shared accounts cycle through ten, because every endpoint session
    /// lingers after use and a user may hold only a few.
    pub fn endpoint(&self, user: &User) -> String {
        let mut map = self.endpoints.lock().expect("endpoint map lock");
        let n = map.entry(user.name.clone()).or_insert(0);
        *n += 1;
        let fixed = [
            &self.w.manager,
            &self.w.presenter,
            &self.w.member,
            &self.w.outsider,
        ]
        .iter()
        .any(|u| u.name == user.name);
        if fixed {
            format!("{}-ep{}", self.ns, *n % 10)
        } else {
            format!("{}-ep{}", self.ns, *n)
        }
    }

    pub fn log(&self, line: impl Into<String>) {
        self.transcript
            .lock()
            .expect("transcript lock")
            .push(line.into());
    }

    /// Takes the transcript of the test that just ended.
    pub fn take_transcript(&self) -> Vec<String> {
        std::mem::take(&mut *self.transcript.lock().expect("transcript lock"))
    }

    /// Keeps a response body as an example of its shape (first one wins).
    pub fn shape(&self, name: &str, body: &Value) {
        self.shapes
            .lock()
            .expect("shapes lock")
            .entry(name.to_owned())
            .or_insert_with(|| body.clone());
    }

    pub fn take_shapes(&self) -> BTreeMap<String, Value> {
        std::mem::take(&mut *self.shapes.lock().expect("shapes lock"))
    }

    /// The administrator token, or not-possible.
    pub fn admin(&self) -> Result<String, Flaw> {
        self.w.admin.clone().ok_or_else(|| {
            Flaw::NotPossible("needs an administrator token (profile: admin_token)".into())
        })
    }

    pub fn req(&self, method: Method, path: impl Into<String>) -> Req<'_> {
        Req {
            cx: self,
            method,
            path: path.into(),
            token: None,
            body: None,
            headers: Vec::new(),
            retry: true,
        }
    }
    pub fn get(&self, path: impl Into<String>) -> Req<'_> {
        self.req(Method::GET, path)
    }
    pub fn post(&self, path: impl Into<String>) -> Req<'_> {
        self.req(Method::POST, path)
    }
    pub fn put(&self, path: impl Into<String>) -> Req<'_> {
        self.req(Method::PUT, path)
    }
    pub fn patch(&self, path: impl Into<String>) -> Req<'_> {
        self.req(Method::PATCH, path)
    }
    pub fn delete(&self, path: impl Into<String>) -> Req<'_> {
        self.req(Method::DELETE, path)
    }

    /// Creates users (administrator needed) with the run's policy and no
    /// password (hashing one is slow on purpose), and returns their tokens.
    pub async fn fresh_users(&self, n: usize) -> Result<Vec<User>, Flaw> {
        let admin = self.admin()?;
        let mut names = Vec::new();
        for _ in 0..n {
            let name = self.name("u");
            let mut body = json!({ "name": name });
            if let Some(p) = &self.w.policy {
                body["policy"] = json!(p);
            }
            self.post("/v1/admin/users")
                .bearer(&admin)
                .json(body)
                .send()
                .await?
                .setup(201, "create a user")?;
            names.push(name);
        }
        self.tokens_for(&names).await
    }

    /// Tokens for existing users (administrator needed).
    pub async fn tokens_for(&self, names: &[String]) -> Result<Vec<User>, Flaw> {
        let admin = self.admin()?;
        let r = self
            .post("/v1/admin/tokens")
            .bearer(&admin)
            .json(json!({ "users": names }))
            .send()
            .await?;
        let body = r.setup(200, "issue tokens")?;
        names
            .iter()
            .map(|n| {
                Ok(User {
                    name: n.clone(),
                    token: body["tokens"][n]
                        .as_str()
                        .setup("a token per user")?
                        .to_owned(),
                    password: None,
                })
            })
            .collect()
    }

    /// `n` users to act with: fresh ones when the suite is an administrator,
    /// otherwise the shared member, presenter and outsider accounts.
    pub async fn actors(&self, n: usize) -> Result<Vec<User>, Flaw> {
        if self.w.admin.is_some() {
            return self.fresh_users(n).await;
        }
        let pool = [&self.w.member, &self.w.presenter, &self.w.outsider];
        if n > pool.len() {
            return Err(Flaw::NotPossible(format!(
                "needs {n} distinct users; without an administrator token only 3 are available"
            )));
        }
        Ok(pool.iter().take(n).map(|u| (*u).clone()).collect())
    }

    /// Creates a room in the run's category as the manager, with the given
    /// settings merged in (`name` and `category` are filled in).
    pub async fn room(&self, spec: Value) -> Result<u64, Flaw> {
        self.room_as(&self.w.manager.token.clone(), spec).await
    }

    pub async fn room_as(&self, token: &str, spec: Value) -> Result<u64, Flaw> {
        let mut body = json!({"name": self.name("room"), "category": self.w.category});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), spec) {
            b.extend(extra);
        }
        let r = self
            .post("/v1/rooms")
            .bearer(token)
            .json(body)
            .send()
            .await?;
        let v = r.setup(201, "create a room")?;
        v["id"].as_u64().setup("room id in the create answer")
    }

    /// Creates a category (administrator needed).
    pub async fn category(&self, spec: Value) -> Result<u64, Flaw> {
        let admin = self.admin()?;
        let mut body = json!({"name": self.name("cat")});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), spec) {
            b.extend(extra);
        }
        let r = self
            .post("/v1/admin/categories")
            .bearer(&admin)
            .json(body)
            .send()
            .await?;
        r.setup(201, "create a category")?["id"]
            .as_u64()
            .setup("category id")
    }

    /// Posts a message as `user` and returns its seq (a set-up step).
    pub async fn say(&self, user: &User, room: u64, text: &str) -> Result<u64, Flaw> {
        let r = self
            .post(format!("/v1/rooms/{room}/messages"))
            .bearer(&user.token)
            .json(json!({ "text": text }))
            .send()
            .await?;
        r.setup(201, "post a message")?["seq"]
            .as_u64()
            .setup("seq in the post answer")
    }

    /// Joins `room` with a new endpoint of `user` (a set-up step); returns
    /// the endpoint id and the join answer.
    pub async fn join(&self, user: &User, room: u64) -> Result<(String, Value), Flaw> {
        let ep = self.endpoint(user);
        let r = self
            .post(format!("/v1/rooms/{room}/join"))
            .bearer(&user.token)
            .json(json!({ "endpoint": ep }))
            .send()
            .await?;
        let v = r.setup(200, "join a room")?.clone();
        Ok((ep, v))
    }

    /// The whole history of a room as seen by `token`, paged.
    pub async fn all_messages(&self, token: &str, room: u64) -> Result<Vec<Value>, Flaw> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .get(format!("/v1/rooms/{room}/messages?after={after}&limit=100"))
                .bearer(token)
                .send()
                .await?;
            let v = r.ok(200)?;
            let page = v["messages"].as_array().cloned().unwrap_or_default();
            if let Some(last) = page.last() {
                after = last["seq"].as_u64().unwrap_or(u64::MAX);
            }
            let more = v["has_more"].as_bool() == Some(true);
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Opens `endpoint`'s event stream as `user` and reads the `ready` frame.
    pub async fn stream(
        &self,
        user: &User,
        endpoint: &str,
        resume: &[(u64, u64)],
    ) -> Result<(Stream<'_>, Vec<wire::JoinedRoom>), Flaw> {
        self.open_stream(user, endpoint, resume, false).await
    }

    /// Opens a stream with `rejoin=true` (PC-9.4d).
    pub async fn stream_rejoining(
        &self,
        user: &User,
        endpoint: &str,
        resume: &[(u64, u64)],
    ) -> Result<(Stream<'_>, Vec<wire::JoinedRoom>), Flaw> {
        self.open_stream(user, endpoint, resume, true).await
    }

    async fn open_stream(
        &self,
        user: &User,
        endpoint: &str,
        resume: &[(u64, u64)],
        rejoin: bool,
    ) -> Result<(Stream<'_>, Vec<wire::JoinedRoom>), Flaw> {
        let client = Client::with_http(self.http.clone(), self.base.clone()).as_token(&user.token);
        self.log(format!(
            "ws> open {endpoint} as {} resume {resume:?}{}",
            user.name,
            if rejoin { " rejoin" } else { "" }
        ));
        let inner = if rejoin {
            client.stream_rejoining(endpoint, resume).await
        } else {
            client.stream(endpoint, resume).await
        };
        let inner = inner
            .map_err(|e| Flaw::Fail(format!("opening the event stream of {endpoint}: {e}")))?;
        let mut s = Stream {
            cx: self,
            inner,
            label: endpoint.to_owned(),
        };
        match s.next_item(self.event_wait).await? {
            Some(StreamItem::Event(Event::Ready { endpoint: e, rooms })) => {
                check_eq!(e, endpoint.to_owned(), "endpoint in the ready frame");
                Ok((s, rooms))
            }
            other => Err(Flaw::Fail(format!(
                "the first frame of a stream must be ready (PC-9.4a), got {other:?}"
            ))),
        }
    }

    /// Runs the restart hook and waits until the server answers `/healthz`.
    pub async fn restart_server(&self) -> Result<(), Flaw> {
        let hook = self
            .restart
            .as_ref()
            .ok_or_else(|| Flaw::Skip("no restart hook in the profile".into()))?;
        self.log("-- restart hook");
        hook.call(&self.ns)
            .await
            .map_err(|e| Flaw::NotPossible(format!("restart hook: {e:#}")))?;
        for _ in 0..200 {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Flaw::Fail(
            "the server did not answer /healthz within 20 s of the restart hook".into(),
        ))
    }

    /// Whether a wait of `secs` server seconds fits the run's budget.
    pub fn can_wait(&self, what: &str, secs: u64) -> Check {
        if Duration::from_secs(secs) > self.max_wait {
            return Err(Flaw::NotPossible(format!(
                "{what} is {secs} s, more than max_wait_s = {} s",
                self.max_wait.as_secs()
            )));
        }
        Ok(())
    }
}

/// A request being built; `send` records it and its answer in the transcript.
pub struct Req<'a> {
    cx: &'a Ctx,
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<(Vec<u8>, Option<String>)>,
    headers: Vec<(String, String)>,
    retry: bool,
}

impl<'a> Req<'a> {
    pub fn bearer(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }
    pub fn as_user(self, user: &User) -> Self {
        let t = user.token.clone();
        self.bearer(&t)
    }
    pub fn json(self, v: Value) -> Self {
        let bytes = serde_json::to_vec(&v).expect("a Value always serialises");
        self.raw(bytes, Some("application/json"))
    }
    /// A body of raw bytes with the given content type (none when `None`).
    pub fn raw(mut self, bytes: Vec<u8>, content_type: Option<&str>) -> Self {
        self.body = Some((bytes, content_type.map(str::to_owned)));
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    /// Do not wait and retry on 429 (for the rate-limit tests).
    pub fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    async fn send_raw(&self) -> anyhow::Result<(u16, HeaderMap, Vec<u8>)> {
        let mut headers = self.headers.clone();
        if let Some(t) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        let (body, ct) = self.body.clone().unwrap_or_default();
        if let Some(ct) = ct {
            headers.push(("Content-Type".into(), ct));
        }
        crate::rawws::http_request(
            &self.cx.base,
            self.method.as_str(),
            &self.path,
            &headers,
            &body,
        )
        .await
    }

    pub async fn send(self) -> Result<Resp, Flaw> {
        let url = format!("{}{}", self.cx.base, self.path);
        for attempt in 0..20 {
            let mut rb = self.cx.http.request(self.method.clone(), &url);
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            for (k, v) in &self.headers {
                rb = rb.header(k, v);
            }
            let mut shown = String::new();
            if let Some((bytes, ct)) = &self.body {
                if let Some(ct) = ct {
                    rb = rb.header(reqwest::header::CONTENT_TYPE, ct);
                }
                rb = rb.body(bytes.clone());
                shown = clip(&String::from_utf8_lossy(bytes));
            }
            self.cx
                .log(format!("> {} {} {}", self.method, self.path, shown));
            let (status, headers, raw) = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let raw = resp
                        .bytes()
                        .await
                        .map_err(|e| Flaw::Fail(format!("reading the answer: {e}")))?
                        .to_vec();
                    (status, headers, raw)
                }
                // The server may answer a body it refuses before reading it
                // and close; read that answer with a raw client.
                Err(e) if self.body.is_some() => {
                    self.cx.log(format!("  ({e}; again with a raw client)"));
                    self.send_raw().await.map_err(|e2| {
                        Flaw::Fail(format!("{} {}: {e}; raw: {e2:#}", self.method, self.path))
                    })?
                }
                Err(e) => return Err(Flaw::Fail(format!("{} {}: {e}", self.method, self.path))),
            };
            let text = String::from_utf8_lossy(&raw).into_owned();
            self.cx.log(format!("< {status} {}", clip(&text)));
            let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let r = Resp {
                status,
                headers,
                body,
                raw,
            };
            if status == 429 && self.retry && attempt < 19 {
                let ms = r.body["error"]["retry_after_ms"].as_u64().unwrap_or(500);
                tokio::time::sleep(Duration::from_millis(ms.clamp(50, 3000))).await;
                continue;
            }
            return Ok(r);
        }
        unreachable!("the last attempt always returns")
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 600 {
        return s.to_owned();
    }
    let mut end = 600;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Resp {
    /// The body, when the status is the expected one; otherwise a failure.
    pub fn ok(&self, status: u16) -> Result<&Value, Flaw> {
        if self.status != status {
            return Err(Flaw::Fail(format!(
                "expected {status}, got {} {}",
                self.status,
                clip(&String::from_utf8_lossy(&self.raw))
            )));
        }
        Ok(&self.body)
    }

    /// Like [`Resp::ok`], but a wrong status means a set-up step failed.
    pub fn setup(&self, status: u16, what: &str) -> Result<&Value, Flaw> {
        self.ok(status).map_err(|f| match f {
            Flaw::Fail(m) => Flaw::NotPossible(format!("{what}: {m}")),
            other => other,
        })
    }

    /// Checks an error answer: status, code, and the body shape of PC-3.1a.
    pub fn err(&self, status: u16, code: &str) -> Result<&Value, Flaw> {
        check!(
            self.status == status && self.body["error"]["code"] == code,
            "expected {status} {code}, got {} {}",
            self.status,
            clip(&String::from_utf8_lossy(&self.raw))
        );
        error_shape(&self.body)?;
        Ok(&self.body)
    }

    /// The `field` of an error body.
    pub fn field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Checks the error body shape of PC-3.1a.
pub fn error_shape(body: &Value) -> Check {
    let e = &body["error"];
    check!(e.is_object(), "error body lacks an `error` object: {body}");
    check!(e["code"].is_string(), "error.code is not a string: {body}");
    check!(
        e["message"].is_string(),
        "error.message is not a string: {body}"
    );
    check!(
        e["request_id"].is_string(),
        "error.request_id is not a string: {body}"
    );
    if let Some(f) = e.get("field") {
        check!(f.is_string(), "error.field is not a string: {body}");
    }
    Ok(())
}

/// An open event stream whose frames go into the transcript.
pub struct Stream<'a> {
    cx: &'a Ctx,
    inner: EventStream,
    label: String,
}

impl<'a> Stream<'a> {
    /// The next item, or `None` when nothing came within `wait`.
    pub async fn next_item(&mut self, wait: Duration) -> Result<Option<StreamItem>, Flaw> {
        match tokio::time::timeout(wait, self.inner.next()).await {
            Err(_) => Ok(None),
            Ok(Err(e)) => {
                self.cx.log(format!("ws< [{}] error {e}", self.label));
                Err(Flaw::Fail(format!("event stream {}: {e}", self.label)))
            }
            Ok(Ok(item)) => {
                self.cx.log(format!("ws< [{}] {item:?}", self.label));
                Ok(Some(item))
            }
        }
    }

    /// Reads until an event satisfies `want`; fails on close or timeout.
    pub async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&Event) -> bool,
    ) -> Result<Event, Flaw> {
        let deadline = tokio::time::Instant::now() + self.cx.event_wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                None => {
                    return Err(Flaw::Fail(format!(
                        "no {what} on {} within {:?}",
                        self.label, self.cx.event_wait
                    )))
                }
                Some(StreamItem::Event(e)) if want(&e) => return Ok(e),
                Some(StreamItem::Event(_)) => {}
                Some(StreamItem::Closed(code, reason)) => {
                    return Err(Flaw::Fail(format!(
                        "stream {} closed ({code:?} {reason}) while waiting for {what}",
                        self.label
                    )))
                }
            }
        }
    }

    /// Reads `n` messages of `room`.
    pub async fn messages(&mut self, room: u64, n: usize) -> Result<Vec<wire::Message>, Flaw> {
        let mut out = Vec::new();
        while out.len() < n {
            let what = format!("message {} of {n} in room {room}", out.len() + 1);
            if let Event::Message(m) = self
                .until(&what, |e| matches!(e, Event::Message(m) if m.room == room))
                .await?
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Every event arriving within `wait` (stops early at a close).
    pub async fn drain(&mut self, wait: Duration) -> Result<Vec<Event>, Flaw> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.next_item(left).await? {
                None | Some(StreamItem::Closed(..)) => return Ok(out),
                Some(StreamItem::Event(e)) => out.push(e),
            }
        }
    }

    /// Reads until the server closes the stream; returns the close code.
    pub async fn closed(&mut self, wait: Duration) -> Result<Option<u16>, Flaw> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inner.next()).await {
                Err(_) => {
                    return Err(Flaw::Fail(format!(
                        "stream {} still open after {wait:?}",
                        self.label
                    )))
                }
                Ok(Err(e)) => {
                    self.cx.log(format!("ws< [{}] error {e}", self.label));
                    return Ok(None);
                }
                Ok(Ok(StreamItem::Closed(code, reason))) => {
                    self.cx
                        .log(format!("ws< [{}] close {code:?} {reason}", self.label));
                    return Ok(code);
                }
                Ok(Ok(item)) => self.cx.log(format!("ws< [{}] {item:?}", self.label)),
            }
        }
    }

    pub async fn send_raw(&mut self, msg: tokio_tungstenite::tungstenite::Message) -> Check {
        self.cx.log(format!("ws> [{}] {msg:?}", self.label));
        self.inner
            .send_raw(msg)
            .await
            .map_err(|e| Flaw::Fail(format!("sending on the stream: {e}")))
    }

    pub async fn close(self) {
        self.cx.log(format!("ws> [{}] close 1000", self.label));
        let _ = self.inner.close().await;
    }
}

impl From<anyhow::Error> for Flaw {
    fn from(e: anyhow::Error) -> Flaw {
        Flaw::Fail(format!("{e:#}"))
    }
}
