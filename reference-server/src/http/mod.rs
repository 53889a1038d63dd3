//! The HTTP surface: routing, request ids, extractors that turn raw requests
//! into validated values (or protocol errors), and error rendering.
//!
//! - `routes`: one handler per operation, each a thin call into [`App`];
//! - `stream`: the WebSocket event stream;
//! - `serve`: the accept loop, with its bound on slow request heads;
//! - this file: the router, the middleware and the extractors.

mod routes;
pub mod serve;
mod stream;

pub(crate) use stream::close_linger;
pub use stream::SocketHandle;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use pchat_protocol::{ErrorBody, ErrorCode, ErrorDetail, REQUEST_ID_HEADER};
use serde::de::DeserializeOwned;

use crate::app::{App, Caller};
use crate::error::ApiError;
use crate::metrics::{HttpLabels, RouteLabels};

tokio::task_local! {
    /// The id of the request being served, for error bodies.
    static REQUEST_ID: String;
}

/// Builds the router of the whole service.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_body_bytes;
    routes::routes(app.clone())
        .fallback(|| async { ApiError::not_found("path", "path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(app, observe))
}

/// Assigns the request id, runs the request inside its scope, echoes the id
/// and records metrics.
async fn observe(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".into());
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    app.metrics
        .http_seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn new_request_id() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                request_id,
                field: self.field,
                retry_after_ms: self.retry_after_ms,
                location: self.location,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON request body, checked as PC-1.2 and PC-3 say: content type, size,
/// UTF-8, syntax, unknown fields, then types and ranges (naming the field).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json_type {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than the server accepts",
                )
            } else {
                ApiError::new(ErrorCode::MalformedJson, "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON document with the error classification of PC-3.2.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::new(
            ErrorCode::InvalidUtf8,
            "the request body is not valid UTF-8",
        ));
    }
    // Every request body is an object (PC-3.2a); without this check serde
    // would also accept a struct written as a JSON array.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Syntax is checked before fields (PC-3.2a): a typed parse stops at
        // the first unknown or mistyped field, which may come before a
        // syntax error further on, so a failed body is checked whole.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return ApiError::new(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {syntax}"),
            );
        }
        let path = e.path().to_string();
        let inner = e.into_inner();
        classify(&path, &inner)
    })?;
    de.end().map_err(|_| {
        ApiError::new(
            ErrorCode::MalformedJson,
            "trailing characters after the JSON value",
        )
    })?;
    Ok(value)
}

fn classify(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {msg}"),
        ),
        Category::Data => {
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let name = rest.split('`').next().unwrap_or("");
                // The path already ends in the unknown field's name.
                let field = if path == "." || path.is_empty() {
                    name.to_owned()
                } else {
                    path.to_owned()
                };
                return ApiError::new(ErrorCode::UnknownField, format!("unknown field {field:?}"))
                    .with_field(field);
            }
            if path == "." && msg.starts_with("invalid type") {
                return ApiError::new(ErrorCode::MalformedJson, "the body must be a JSON object");
            }
            // Strip serde's position suffix; keep its reason.
            let reason = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            let field = if path == "." {
                missing_field(&reason).unwrap_or_default()
            } else {
                path.to_owned()
            };
            ApiError::new(ErrorCode::InvalidRequest, reason).with_field(field)
        }
    }
}

fn missing_field(reason: &str) -> Option<String> {
    reason
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_owned)
}

/// Query parameters, with failures as `invalid_request` naming the parameter.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(raw));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let reason = e.into_inner().to_string();
                let field = if path == "." {
                    missing_field(&reason).unwrap_or_default()
                } else {
                    path
                };
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("bad query parameter: {reason}"),
                )
                .with_field(field)
            })
    }
}

fn form_urlencoded_parse(raw: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(raw.as_bytes())
}

/// The authenticated caller; every authenticated request is charged to the
/// caller's request bucket here.
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send Authorization: Bearer <token>",
            )
        })?;
        let caller = app.authenticate(&token)?;
        app.charge(&caller, false)?;
        Ok(Auth(caller))
    }
}

/// An authenticated Persistent Chat administrator.
pub struct Admin(pub Caller);

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let Auth(caller) = Auth::from_request_parts(parts, app).await?;
        if !caller.admin {
            return Err(ApiError::forbidden("administrators only"));
        }
        Ok(Admin(caller))
    }
}

/// The bearer token of a request: the Authorization header, or for the event
/// stream only, the `access_token` query parameter (browsers cannot set
/// headers on a WebSocket).
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if parts.uri.path() == "/v1/stream" {
        let q = parts.uri.query()?;
        return form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned());
    }
    None
}
