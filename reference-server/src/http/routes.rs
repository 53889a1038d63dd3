//! One handler per operation of docs/protocol.md. Handlers parse, call the
//! [`App`], and pick the status; they hold no logic of their own.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use pchat_protocol::{self as wire, RoomList};
use serde::Deserialize;

use super::{Admin, Auth, Json, Query};
use crate::app::{views, App, HistoryFrom, MessageSearch, Posted};
use crate::domain::{CategoryId, RoomId};
use crate::error::{ApiError, ApiResult};

type AppState = State<Arc<App>>;

pub fn routes(app: Arc<App>) -> Router {
    let provision_limit = app.config.limits.max_provision_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/limits", get(limits))
        .route("/v1/auth/token", post(login))
        .route("/v1/me", get(me))
        .route("/v1/me/presence", put(set_presence))
        .route("/v1/me/followed", get(followed))
        .route("/v1/me/followed/{room}", put(follow).delete(unfollow))
        .route("/v1/me/invitations", get(invitations))
        .route("/v1/me/rooms", get(my_rooms))
        .route("/v1/categories", get(categories))
        .route("/v1/rooms", get(search_rooms).post(create_room))
        .route(
            "/v1/rooms/{room}",
            get(get_room).patch(update_room).delete(delete_room),
        )
        .route("/v1/rooms/{room}/lists/{list}", post(change_list))
        .route("/v1/rooms/{room}/join", post(join))
        .route("/v1/rooms/{room}/leave", post(leave))
        .route("/v1/rooms/{room}/participants", get(participants))
        .route("/v1/rooms/{room}/messages", get(history).post(post_message))
        .route("/v1/search/messages", get(search_messages))
        .route("/v1/stream", get(super::stream::stream))
        .route("/v1/admin/users", get(list_users).post(create_user))
        .route(
            "/v1/admin/users/{name}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v1/admin/groups", post(create_group))
        .route(
            "/v1/admin/groups/{name}",
            get(get_group).patch(change_group).delete(delete_group),
        )
        .route("/v1/admin/policies", get(policies))
        .route("/v1/admin/policies/{name}", put(set_policy))
        .route(
            "/v1/admin/administrators",
            get(administrators).post(change_administrators),
        )
        .route(
            "/v1/admin/categories",
            get(admin_categories).post(create_category),
        )
        .route(
            "/v1/admin/categories/{id}",
            get(admin_category)
                .patch(update_category)
                .delete(delete_category),
        )
        .route(
            "/v1/admin/config",
            get(service_config).patch(update_service_config),
        )
        .route("/v1/admin/pools", get(pools))
        .route("/v1/admin/addins", get(addins).post(add_addin))
        .route(
            "/v1/admin/addins/{name}",
            axum::routing::delete(delete_addin),
        )
        .route(
            "/v1/admin/compliance",
            get(compliance).patch(update_compliance),
        )
        .route("/v1/admin/compliance/export", post(export_compliance))
        .route("/v1/admin/rooms/{room}/clear", post(clear_history))
        .route(
            "/v1/admin/rooms/{room}/remove-messages",
            post(remove_messages),
        )
        .route("/v1/admin/tokens", post(issue_tokens))
        .route(
            "/v1/admin/provision",
            post(provision).layer(DefaultBodyLimit::max(provision_limit)),
        )
        .with_state(app)
}

/// Room ids in paths: anything that is not a room id is a room that does not
/// exist (PC-7.1b).
fn room_id(raw: &str) -> ApiResult<RoomId> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
        .map(|id| RoomId(id as i64))
        .ok_or_else(ApiError::room_not_found)
}

fn category_id(raw: &str) -> ApiResult<CategoryId> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
        .map(|id| CategoryId(id as i64))
        .ok_or_else(|| ApiError::not_found("category", "id"))
}

/// A limit parameter: absent gives the default; outside 1..=max is refused.
fn limit(value: Option<i64>, default: usize, max: usize) -> ApiResult<usize> {
    match value {
        None => Ok(default),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(_) => Err(ApiError::invalid(
            "limit",
            format!("limit must be 1 to {max}"),
        )),
    }
}

fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn ok<T: serde::Serialize>(body: T) -> Response {
    axum::Json(body).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------- operational

async fn healthz(State(app): AppState) -> Response {
    if app.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "stopping"})),
        )
            .into_response()
    } else {
        ok(serde_json::json!({"status": "ok"}))
    }
}

async fn metrics(State(app): AppState) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

pub const HISTORY_LIMIT: (usize, usize) = (50, 500);
pub const SEARCH_LIMIT: (usize, usize) = (50, 200);
pub const ROOMS_LIMIT: (usize, usize) = (50, 500);
pub const PARTICIPANTS_LIMIT: (usize, usize) = (100, 1000);

/// The limits this server enforces (PC-2.2).
pub fn limits_of(app: &App) -> wire::Limits {
    let c = &app.config;
    wire::Limits {
        max_body_bytes: c.limits.max_body_bytes as u64,
        max_provision_bytes: c.limits.max_provision_bytes as u64,
        max_text_chars: c.limits.max_text_chars as u32,
        max_title_chars: 256,
        max_name_chars: 256,
        max_description_chars: 256,
        max_client_key_len: 64,
        max_endpoints_per_user: c.limits.max_endpoints_per_user as u32,
        history_limit_default: HISTORY_LIMIT.0 as u32,
        history_limit_max: HISTORY_LIMIT.1 as u32,
        search_limit_default: SEARCH_LIMIT.0 as u32,
        search_limit_max: SEARCH_LIMIT.1 as u32,
        rooms_limit_default: ROOMS_LIMIT.0 as u32,
        rooms_limit_max: ROOMS_LIMIT.1 as u32,
        join_since_max: crate::app::JOIN_SINCE_MAX as u32,
        post_rate_per_s: c.limits.post_rate_per_s,
        post_burst: c.limits.post_burst,
        request_rate_per_s: c.limits.request_rate_per_s,
        request_burst: c.limits.request_burst,
        stream_queue_events: c.stream.queue_events as u32,
        heartbeat_interval_s: c.stream.heartbeat_interval_s as u32,
        heartbeat_timeout_s: c.stream.heartbeat_timeout_s as u32,
        endpoint_linger_s: c.stream.endpoint_linger_s as u32,
        max_client_frame_bytes: c.stream.max_client_frame_bytes as u32,
    }
}

async fn limits(State(app): AppState) -> Response {
    ok(limits_of(&app))
}

// ---------------------------------------------------------------- auth and self

async fn login(State(app): AppState, Json(req): Json<wire::TokenRequest>) -> ApiResult<Response> {
    Ok(ok(app.login(req)?))
}

async fn me(State(app): AppState, Auth(c): Auth) -> Response {
    ok(app.me(&c))
}

async fn set_presence(
    State(app): AppState,
    Auth(c): Auth,
    Json(req): Json<wire::SetPresence>,
) -> ApiResult<Response> {
    Ok(ok(app.set_presence(&c, req.state)?))
}

async fn followed(State(app): AppState, Auth(c): Auth) -> ApiResult<Response> {
    Ok(ok(app.followed(&c).await?))
}

async fn follow(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    app.set_followed(&c, room_id(&room)?, true).await?;
    Ok(no_content())
}

async fn unfollow(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    app.set_followed(&c, room_id(&room)?, false).await?;
    Ok(no_content())
}

async fn invitations(State(app): AppState, Auth(c): Auth) -> ApiResult<Response> {
    Ok(ok(app.invitations(&c).await?))
}

async fn my_rooms(State(app): AppState, Auth(c): Auth) -> Response {
    ok(app.my_rooms(&c))
}

// ---------------------------------------------------------------- rooms

async fn categories(State(app): AppState, Auth(c): Auth) -> Response {
    ok(app.categories(&c))
}

#[derive(Deserialize)]
struct RoomQuery {
    q: Option<String>,
    category: Option<u64>,
    limit: Option<i64>,
}

async fn search_rooms(
    State(app): AppState,
    Auth(c): Auth,
    Query(q): Query<RoomQuery>,
) -> ApiResult<Response> {
    let n = limit(q.limit, ROOMS_LIMIT.0, ROOMS_LIMIT.1)?;
    Ok(ok(app.search_rooms(&c, q.q.as_deref(), q.category, n)))
}

async fn create_room(
    State(app): AppState,
    Auth(c): Auth,
    Json(req): Json<wire::CreateRoom>,
) -> ApiResult<Response> {
    Ok(created(app.create_room(&c, req).await?))
}

async fn get_room(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    Ok(ok(app.get_room(&c, room_id(&room)?)?))
}

async fn update_room(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Json(req): Json<wire::UpdateRoom>,
) -> ApiResult<Response> {
    Ok(ok(app.update_room(&c, room_id(&room)?, req).await?))
}

async fn delete_room(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    app.delete_room(&c, room_id(&room)?).await?;
    Ok(no_content())
}

async fn change_list(
    State(app): AppState,
    Auth(c): Auth,
    Path((room, list)): Path<(String, String)>,
    Json(req): Json<wire::ChangeList>,
) -> ApiResult<Response> {
    let room = room_id(&room)?;
    let list = match list.as_str() {
        "managers" => RoomList::Managers,
        "presenters" => RoomList::Presenters,
        "members" => RoomList::Members,
        _ => return Err(ApiError::not_found("list", "list")),
    };
    Ok(ok(app.change_list(&c, room, list, req).await?))
}

async fn join(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Json(req): Json<wire::JoinRoom>,
) -> ApiResult<Response> {
    Ok(ok(app.join(&c, room_id(&room)?, req).await?))
}

async fn leave(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Json(req): Json<wire::LeaveRoom>,
) -> ApiResult<Response> {
    app.leave(&c, room_id(&room)?, req).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn participants(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Response> {
    let n = limit(q.limit, PARTICIPANTS_LIMIT.0, PARTICIPANTS_LIMIT.1)?;
    Ok(ok(app.participants(&c, room_id(&room)?, n)?))
}

// ---------------------------------------------------------------- messages

async fn post_message(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Json(req): Json<wire::PostMessage>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let posted = app.post(&c, room_id(&room)?, req).await?;
    app.metrics
        .post_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(match posted {
        Posted::New(m) => created(m),
        Posted::Replayed(m) => ok(m),
    })
}

#[derive(Deserialize)]
struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<i64>,
}

async fn history(
    State(app): AppState,
    Auth(c): Auth,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    let room = room_id(&room)?;
    let n = limit(q.limit, HISTORY_LIMIT.0, HISTORY_LIMIT.1)?;
    let from = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "before",
                "give before or after, not both",
            ))
        }
        (Some(b), None) => HistoryFrom::Before(b),
        (None, Some(a)) => HistoryFrom::After(a),
        (None, None) => HistoryFrom::Latest,
    };
    Ok(ok(app.history(&c, room, from, n).await?))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
    rooms: Option<String>,
    author: Option<String>,
    from: Option<String>,
    to: Option<String>,
    exact: Option<bool>,
    case_sensitive: Option<bool>,
    limit: Option<i64>,
}

async fn search_messages(
    State(app): AppState,
    Auth(c): Auth,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Response> {
    let rooms = match q.rooms.as_deref() {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|r| r.trim().parse::<u64>().map(|id| RoomId(id as i64)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::invalid("rooms", "rooms is a comma-separated list of room ids")
                })?,
        ),
    };
    let search = MessageSearch {
        q: q.q,
        rooms,
        author: q.author,
        from_ms: q
            .from
            .as_deref()
            .map(|t| views::parse_timestamp("from", t))
            .transpose()?,
        to_ms: q
            .to
            .as_deref()
            .map(|t| views::parse_timestamp("to", t))
            .transpose()?,
        exact: q.exact.unwrap_or(false),
        case_sensitive: q.case_sensitive.unwrap_or(false),
        limit: limit(q.limit, SEARCH_LIMIT.0, SEARCH_LIMIT.1)?,
    };
    Ok(ok(app.search_messages(&c, search).await?))
}

// ---------------------------------------------------------------- administration

#[derive(Deserialize)]
struct UserQuery {
    prefix: Option<String>,
    limit: Option<i64>,
}

async fn list_users(
    State(app): AppState,
    Admin(_): Admin,
    Query(q): Query<UserQuery>,
) -> ApiResult<Response> {
    let n = limit(q.limit, 100, 1000)?;
    Ok(ok(
        serde_json::json!({ "users": app.list_users(q.prefix.as_deref(), n) }),
    ))
}

async fn create_user(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::CreateUser>,
) -> ApiResult<Response> {
    Ok(created(app.create_user(&c, req).await?))
}

async fn get_user(
    State(app): AppState,
    Admin(_): Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(ok(app.get_user(&name)?))
}

async fn update_user(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
    Json(req): Json<wire::UpdateUser>,
) -> ApiResult<Response> {
    Ok(ok(app.update_user(&c, &name, req).await?))
}

async fn delete_user(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    app.delete_user(&c, &name).await?;
    Ok(no_content())
}

async fn create_group(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::CreateGroup>,
) -> ApiResult<Response> {
    Ok(created(app.create_group(&c, req).await?))
}

async fn get_group(
    State(app): AppState,
    Admin(_): Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(ok(app.get_group(&name)?))
}

async fn change_group(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
    Json(req): Json<wire::ChangeList>,
) -> ApiResult<Response> {
    Ok(ok(app.change_group(&c, &name, req).await?))
}

async fn delete_group(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    app.delete_group(&c, &name).await?;
    Ok(no_content())
}

async fn policies(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.policies())
}

async fn set_policy(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
    Json(req): Json<wire::SetPolicy>,
) -> ApiResult<Response> {
    Ok(ok(app.set_policy(&c, &name, req.enabled).await?))
}

async fn administrators(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.administrators())
}

async fn change_administrators(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::ChangeAdministrators>,
) -> ApiResult<Response> {
    Ok(ok(app.change_administrators(&c, req).await?))
}

async fn admin_categories(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.admin_categories())
}

async fn create_category(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::CreateCategory>,
) -> ApiResult<Response> {
    Ok(created(app.create_category(&c, req).await?))
}

async fn admin_category(
    State(app): AppState,
    Admin(_): Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(ok(app.admin_category(category_id(&id)?)?))
}

async fn update_category(
    State(app): AppState,
    Admin(c): Admin,
    Path(id): Path<String>,
    Json(req): Json<wire::UpdateCategory>,
) -> ApiResult<Response> {
    Ok(ok(app.update_category(&c, category_id(&id)?, req).await?))
}

async fn delete_category(
    State(app): AppState,
    Admin(c): Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    app.delete_category(&c, category_id(&id)?).await?;
    Ok(no_content())
}

async fn pools(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.pools())
}

async fn service_config(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.settings().service)
}

async fn update_service_config(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::UpdateServiceConfig>,
) -> ApiResult<Response> {
    Ok(ok(app.update_service_config(&c, req).await?))
}

async fn addins(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.addins())
}

async fn add_addin(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::AddIn>,
) -> ApiResult<Response> {
    Ok(created(app.add_addin(&c, req).await?))
}

async fn delete_addin(
    State(app): AppState,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    app.delete_addin(&c, &name).await?;
    Ok(no_content())
}

async fn compliance(State(app): AppState, Admin(_): Admin) -> Response {
    ok(app.settings().compliance)
}

async fn update_compliance(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::UpdateComplianceConfig>,
) -> ApiResult<Response> {
    Ok(ok(app.update_compliance(&c, req).await?))
}

async fn clear_history(
    State(app): AppState,
    Admin(c): Admin,
    Path(room): Path<String>,
    Json(req): Json<wire::ClearHistory>,
) -> ApiResult<Response> {
    let before = views::parse_timestamp("before", &req.before)?;
    Ok(ok(app.clear_history(&c, room_id(&room)?, before).await?))
}

async fn remove_messages(
    State(app): AppState,
    Admin(c): Admin,
    Path(room): Path<String>,
    Json(req): Json<wire::RemoveMessages>,
) -> ApiResult<Response> {
    Ok(ok(app.remove_messages(&c, room_id(&room)?, req).await?))
}

async fn issue_tokens(
    State(app): AppState,
    Admin(_): Admin,
    Json(req): Json<wire::BulkTokenRequest>,
) -> ApiResult<Response> {
    Ok(ok(app.issue_tokens(req)?))
}

async fn provision(
    State(app): AppState,
    Admin(c): Admin,
    Json(req): Json<wire::Provision>,
) -> ApiResult<Response> {
    Ok(ok(app.provision(&c, req).await?))
}

async fn export_compliance(State(app): AppState, Admin(_): Admin) -> ApiResult<Response> {
    let done = crate::compliance::export_now(&app)
        .await
        .map_err(ApiError::internal)?;
    Ok(ok(done))
}
