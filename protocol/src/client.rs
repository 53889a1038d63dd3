//! A small async client of the protocol, for tests, the load generator, the
//! conformance suite and the `reference-server chat` command.
//!
//! It speaks HTTP through one shared `reqwest::Client` (connection pooling) and
//! opens event streams with tokio-tungstenite. It does no retrying of its own:
//! callers decide what a retry means (idempotency keys are theirs to choose).

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::*;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a protocol error body.
    #[error("{status} {}: {}", .body.error.code, .body.error.message)]
    Api { status: u16, body: Box<ErrorBody> },
    /// The server answered with something that is not a protocol error body.
    #[error("unexpected response {status}: {text}")]
    Unexpected { status: u16, text: String },
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("bad json from server: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientError {
    /// The protocol error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.error.code),
            _ => None,
        }
    }
}

/// One server, one identity.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The status and decoded body of a successful call.
#[derive(Debug)]
pub struct Reply<T> {
    pub status: u16,
    pub body: T,
}

impl Client {
    /// A client of the server at `base` (for example `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Client {
        Client::with_http(reqwest::Client::new(), base)
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(http: reqwest::Client, base: impl Into<String>) -> Client {
        let base = base.into().trim_end_matches('/').to_owned();
        Client {
            http,
            base,
            token: None,
        }
    }

    /// The same server and pool, acting as the holder of `token`.
    pub fn as_token(&self, token: impl Into<String>) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(token.into()),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends `method path` with an optional JSON body and decodes a 2xx answer
    /// as `T` (use `serde_json::Value` or `()` via [`Client::call_empty`]).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Reply<T>, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        if (200..300).contains(&status) {
            let body = if bytes.is_empty() {
                serde_json::from_slice(b"null")?
            } else {
                serde_json::from_slice(&bytes)?
            };
            return Ok(Reply { status, body });
        }
        Err(api_error(status, &bytes))
    }

    /// Like [`Client::call`] for operations that answer 204 No Content.
    pub async fn call_empty(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<u16, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(status);
        }
        let bytes = resp.bytes().await?;
        Err(api_error(status, &bytes))
    }

    /// The raw response, for callers that check statuses and headers themselves.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Ok(req.send().await?)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, path, None::<&()>)
            .await?
            .body)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, path, Some(body))
            .await?
            .body)
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        Ok(self
            .call(reqwest::Method::PATCH, path, Some(body))
            .await?
            .body)
    }

    /// `POST /v1/auth/token`.
    pub async fn login(&self, user: &str, password: &str) -> Result<TokenResponse, ClientError> {
        let req = TokenRequest {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        self.post("/v1/auth/token", &req).await
    }

    /// `POST /v1/rooms/{room}/messages`.
    pub async fn post_message(
        &self,
        room: u64,
        msg: &PostMessage,
    ) -> Result<Reply<Message>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(msg),
        )
        .await
    }

    /// `POST /v1/rooms/{room}/join`.
    pub async fn join(
        &self,
        room: u64,
        endpoint: &str,
        since: Option<u64>,
    ) -> Result<Joined, ClientError> {
        let req = JoinRoom {
            endpoint: endpoint.to_owned(),
            since,
        };
        self.post(&format!("/v1/rooms/{room}/join"), &req).await
    }

    /// `GET /v1/rooms/{room}/messages` with a query string such as `after=10&limit=50`.
    pub async fn history(&self, room: u64, query: &str) -> Result<History, ClientError> {
        self.get(&format!("/v1/rooms/{room}/messages?{query}"))
            .await
    }

    /// Opens the event stream of `endpoint`, resuming the given rooms after the
    /// given sequence numbers.
    pub async fn stream(
        &self,
        endpoint: &str,
        resume: &[(u64, u64)],
    ) -> Result<EventStream, ClientError> {
        self.open_stream(endpoint, resume, false).await
    }

    /// Opens the event stream with `rejoin=true` (PC-9.4d): the session
    /// joins the rooms of `resume` it has not joined, and the stream
    /// replays each from its entry.
    pub async fn stream_rejoining(
        &self,
        endpoint: &str,
        resume: &[(u64, u64)],
    ) -> Result<EventStream, ClientError> {
        self.open_stream(endpoint, resume, true).await
    }

    async fn open_stream(
        &self,
        endpoint: &str,
        resume: &[(u64, u64)],
        rejoin: bool,
    ) -> Result<EventStream, ClientError> {
        let request = stream_request(&self.base, self.token.as_deref(), endpoint, resume, rejoin)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        Ok(EventStream { ws })
    }
}

/// The WebSocket upgrade request of `GET /v1/stream` (PC-9.4a) for the
/// server at `base`, with the bearer token in the Authorization header;
/// with `rejoin`, the resume entries' rooms are joined first (PC-9.4d).
pub fn stream_request(
    base: &str,
    token: Option<&str>,
    endpoint: &str,
    resume: &[(u64, u64)],
    rejoin: bool,
) -> Result<tungstenite::handshake::client::Request, ClientError> {
    let ws_base = base.replacen("http", "ws", 1);
    let mut url = format!("{ws_base}/v1/stream?endpoint={endpoint}");
    if !resume.is_empty() {
        let list: Vec<String> = resume.iter().map(|(r, s)| format!("{r}:{s}")).collect();
        url.push_str("&resume=");
        url.push_str(&list.join(","));
    }
    if rejoin {
        url.push_str("&rejoin=true");
    }
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Unexpected {
                status: 0,
                text: "token is not a header value".into(),
            })?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            body: Box::new(body),
        },
        Err(_) => ClientError::Unexpected {
            status,
            text: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// An open event stream.
pub struct EventStream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What reading the stream produced.
#[derive(Debug)]
pub enum StreamItem {
    Event(Event),
    /// The server closed the stream with this code and reason.
    Closed(Option<u16>, String),
}

impl EventStream {
    /// The next event, or how the stream ended. Pings are answered by the
    /// underlying library as they are read.
    pub async fn next(&mut self) -> Result<StreamItem, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Ok(StreamItem::Closed(None, String::new())),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(tungstenite::Message::Text(text))) => {
                    return Ok(StreamItem::Event(serde_json::from_str(&text)?));
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    return Ok(StreamItem::Closed(code, reason));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends a raw frame (the conformance suite uses this to test refusals).
    pub async fn send_raw(&mut self, msg: tungstenite::Message) -> Result<(), ClientError> {
        Ok(self.ws.send(msg).await?)
    }

    /// Closes the stream normally.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }
}
