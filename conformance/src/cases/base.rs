//! §1 conventions, §2 limits, §3 errors, §4 authentication and §16
//! operational endpoints: mostly raw HTTP with malformed input.

use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{error_shape, Check, Ctx, Flaw, Setup};
use crate::redact::is_timestamp;
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-1.1a", operations_live_under_v1),
        case!("PC-1.1b", stream_is_a_websocket_at_v1_stream),
        case!("PC-1.2a", bodies_need_json_content_type),
        case!("PC-1.2b", responses_are_json_and_204_is_empty),
        case!("PC-1.3a", names_and_endpoint_ids_are_checked),
        case!("PC-1.3b", principals_and_reserved_names),
        case!("PC-1.3c", room_ids_are_positive_and_never_reused),
        case!("PC-1.4a", timestamps_have_millis_and_z),
        case!("PC-1.5a", unknown_fields_are_refused),
        case!("PC-1.5d", unknown_query_parameters_are_ignored),
        case!("PC-1.5b", request_ids_are_echoed),
        case!("PC-2.1a", limits_are_public),
        case!("PC-2.2a", published_limits_are_enforced),
        case!("PC-2.3a", buckets_answer_429_without_effect),
        case!("PC-3.1a", error_bodies_have_the_documented_shape),
        case!("PC-3.2a", body_checks_happen_in_order),
        case!("PC-3.3a", refused_requests_change_nothing),
        case!("PC-4.1a", operations_need_a_bearer_token),
        case!("PC-4.1b", tokens_are_at_most_512_bytes),
        case!("PC-4.2a", sign_in_with_password),
        case!("PC-4.2b", disabled_users_lose_tokens_and_streams),
        case!("PC-4.3a", disabled_policy_answers_policy_disabled),
        case!("PC-16.1a", healthz_answers_ok),
        case!("PC-16.2a", metrics_are_prometheus_text),
    ]
}

fn messages_path(room: u64) -> String {
    format!("/v1/rooms/{room}/messages")
}

async fn open_room(cx: &Ctx) -> Result<u64, Flaw> {
    cx.room(json!({"privacy": "open", "members": [cx.w.member.principal()]}))
        .await
}

async fn count(cx: &Ctx, room: u64) -> Result<usize, Flaw> {
    Ok(cx.all_messages(&cx.w.member.token, room).await?.len())
}

async fn operations_live_under_v1(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    cx.get("/v1/me").as_user(m).send().await?.ok(200)?;
    cx.get("/v1/limits").send().await?.ok(200)?;
    let r = cx.get("/me").as_user(m).send().await?;
    check!(
        r.status == 404,
        "GET /me (outside /v1) answered {}, want 404",
        r.status
    );
    cx.get("/healthz").send().await?.ok(200)?;
    Ok(())
}

async fn stream_is_a_websocket_at_v1_stream(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let (s, _rooms) = cx.stream(m, &ep, &[]).await?;
    s.close().await;
    Ok(())
}

async fn bodies_need_json_content_type(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    let body = br#"{"text":"hello"}"#.to_vec();
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .raw(body.clone(), Some("text/plain"))
        .send()
        .await?;
    r.err(415, "unsupported_media_type")?;
    cx.shape("error.unsupported_media_type", &r.body);
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .raw(body.clone(), None)
        .send()
        .await?;
    r.err(415, "unsupported_media_type")?;
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .raw(body, Some("application/json; charset=utf-8"))
        .send()
        .await?;
    r.ok(201)?;
    Ok(())
}

async fn responses_are_json_and_204_is_empty(cx: &Ctx) -> Check {
    let r = cx.get("/v1/me").as_user(&cx.w.member).send().await?;
    r.ok(200)?;
    let ct = r.header("content-type").unwrap_or("");
    check!(
        ct.starts_with("application/json"),
        "GET /v1/me has content type {ct:?}"
    );
    let room = open_room(cx).await?;
    let r = cx
        .post(format!("/v1/rooms/{room}/leave"))
        .as_user(&cx.w.member)
        .json(json!({"endpoint": cx.endpoint(&cx.w.member)}))
        .send()
        .await?;
    r.ok(204)?;
    check!(
        r.raw.is_empty(),
        "a 204 answer carried {} bytes",
        r.raw.len()
    );
    Ok(())
}

async fn names_and_endpoint_ids_are_checked(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    let m = &cx.w.member;
    for bad in ["bad/endpoint", "a b", "at@sign", &"e".repeat(65), ""] {
        let r = cx
            .post(format!("/v1/rooms/{room}/join"))
            .as_user(m)
            .json(json!({ "endpoint": bad }))
            .send()
            .await?;
        r.err(400, "invalid_request")
            .map_err(|f| Flaw::Fail(format!("endpoint {bad:?}: {f:?}")))?;
    }
    let ok = format!("{}-A.b_c-9", cx.ns);
    cx.post(format!("/v1/rooms/{room}/join"))
        .as_user(m)
        .json(json!({ "endpoint": ok }))
        .send()
        .await?
        .ok(200)?;
    if let Ok(admin) = cx.admin() {
        for bad in ["has space", "slash/y", &"u".repeat(65)] {
            let r = cx
                .post("/v1/admin/users")
                .bearer(&admin)
                .json(json!({ "name": bad }))
                .send()
                .await?;
            r.err(400, "invalid_request")
                .map_err(|f| Flaw::Fail(format!("user name {bad:?}: {f:?}")))?;
        }
        let good = format!("{}.x@y-z_", cx.ns);
        cx.post("/v1/admin/users")
            .bearer(&admin)
            .json(json!({ "name": good }))
            .send()
            .await?
            .ok(201)?;
    }
    Ok(())
}

async fn principals_and_reserved_names(cx: &Ctx) -> Check {
    // A malformed principal is refused.
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.manager)
        .json(json!({"name": cx.name("room"), "category": cx.w.category,
            "members": ["robot:x"]}))
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    // group:everyone holds every user.
    let room = cx
        .room(json!({"privacy": "closed", "members": ["group:everyone"]}))
        .await?;
    cx.get(messages_path(room))
        .as_user(&cx.w.outsider)
        .send()
        .await?
        .ok(200)?;
    if let Ok(admin) = cx.admin() {
        let r = cx
            .post("/v1/admin/users")
            .bearer(&admin)
            .json(json!({ "name": "operator" }))
            .send()
            .await?;
        check!(
            (400..500).contains(&r.status),
            "creating a user named operator answered {}",
            r.status
        );
        let r = cx
            .post("/v1/admin/groups")
            .bearer(&admin)
            .json(json!({ "name": "everyone", "members": [] }))
            .send()
            .await?;
        check!(
            (400..500).contains(&r.status),
            "creating a group named everyone answered {}",
            r.status
        );
    }
    Ok(())
}

async fn room_ids_are_positive_and_never_reused(cx: &Ctx) -> Check {
    let a = cx.room(json!({})).await?;
    let b = cx.room(json!({})).await?;
    for id in [a, b] {
        check!((1..1 << 53).contains(&id), "room id {id} out of range");
    }
    check!(a != b, "two rooms got the same id {a}");
    if let Ok(admin) = cx.admin() {
        cx.delete(format!("/v1/rooms/{b}"))
            .bearer(&admin)
            .send()
            .await?
            .ok(204)?;
        let c = cx.room(json!({})).await?;
        check!(
            c != b && c != a,
            "a new room reused the id {c} of a deleted one"
        );
        let cat = cx.category(json!({})).await?;
        check!(
            (1..1 << 53).contains(&cat),
            "category id {cat} out of range"
        );
    }
    Ok(())
}

async fn timestamps_have_millis_and_z(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .json(json!({"text": "time"}))
        .send()
        .await?;
    let ts = r.ok(201)?["ts"].as_str().unwrap_or("").to_owned();
    check!(is_timestamp(&ts), "message ts {ts:?}");
    let room_v = cx
        .get(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.member)
        .send()
        .await?;
    let created = room_v.ok(200)?["created_at"].as_str().unwrap_or("");
    check!(is_timestamp(created), "room created_at {created:?}");
    if let Some(pw) = &cx.w.member.password {
        let r = cx
            .post("/v1/auth/token")
            .json(json!({"user": cx.w.member.name, "password": pw}))
            .send()
            .await?;
        let exp = r.ok(200)?["expires_at"].as_str().unwrap_or("");
        check!(is_timestamp(exp), "token expires_at {exp:?}");
    }
    Ok(())
}

async fn unknown_fields_are_refused(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .json(json!({"text": "hi", "colour": "red"}))
        .send()
        .await?;
    r.err(400, "unknown_field")?;
    check_eq!(r.field(), Some("colour"), "field of unknown_field");
    cx.shape("error.unknown_field", &r.body);
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"nmae": "x"}))
        .send()
        .await?;
    r.err(400, "unknown_field")?;
    check_eq!(r.field(), Some("nmae"), "field of unknown_field");
    Ok(())
}

async fn unknown_query_parameters_are_ignored(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    cx.get(format!("{}?utm_source=x&limit=5", messages_path(room)))
        .as_user(&cx.w.member)
        .send()
        .await?
        .ok(200)?;
    let r = cx
        .get(format!("{}?limit=abc", messages_path(room)))
        .as_user(&cx.w.member)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    check_eq!(r.field(), Some("limit"), "field naming the bad parameter");
    cx.shape("error.invalid_parameter", &r.body);
    Ok(())
}

async fn request_ids_are_echoed(cx: &Ctx) -> Check {
    let id = format!("{}-req-1", cx.ns);
    let r = cx
        .get("/v1/rooms/abc")
        .as_user(&cx.w.member)
        .header("Pchat-Request-Id", &id)
        .send()
        .await?;
    check_eq!(
        r.header("pchat-request-id"),
        Some(id.as_str()),
        "echoed header"
    );
    check_eq!(
        r.body["error"]["request_id"].as_str(),
        Some(id.as_str()),
        "request_id in the error body"
    );
    let r = cx.get("/v1/rooms/abc").as_user(&cx.w.member).send().await?;
    let generated = r.header("pchat-request-id").unwrap_or("").to_owned();
    check!(
        !generated.is_empty() && generated.len() <= 64,
        "no generated request id: {generated:?}"
    );
    check_eq!(
        r.body["error"]["request_id"].as_str(),
        Some(generated.as_str()),
        "generated id in the body"
    );
    let long = "x".repeat(65);
    let r = cx
        .get("/v1/me")
        .as_user(&cx.w.member)
        .header("Pchat-Request-Id", &long)
        .send()
        .await?;
    let got = r.header("pchat-request-id").unwrap_or("");
    check!(
        !got.is_empty() && got != long,
        "an invalid request id was echoed or dropped: {got:?}"
    );
    Ok(())
}

const LIMIT_FIELDS: [&str; 24] = [
    "max_body_bytes",
    "max_provision_bytes",
    "max_text_chars",
    "max_title_chars",
    "max_name_chars",
    "max_description_chars",
    "max_client_key_len",
    "max_endpoints_per_user",
    "history_limit_default",
    "history_limit_max",
    "search_limit_default",
    "search_limit_max",
    "rooms_limit_default",
    "rooms_limit_max",
    "join_since_max",
    "post_rate_per_s",
    "post_burst",
    "request_rate_per_s",
    "request_burst",
    "stream_queue_events",
    "heartbeat_interval_s",
    "heartbeat_timeout_s",
    "endpoint_linger_s",
    "max_client_frame_bytes",
];

async fn limits_are_public(cx: &Ctx) -> Check {
    let r = cx.get("/v1/limits").send().await?;
    let v = r.ok(200)?;
    for f in LIMIT_FIELDS {
        check!(v[f].is_number(), "limits lack a number `{f}`: {v}");
    }
    cx.shape("limits", v);
    Ok(())
}

async fn published_limits_are_enforced(cx: &Ctx) -> Check {
    let l = &cx.limits;
    let room = open_room(cx).await?;
    let m = &cx.w.member;
    let post = |body: Value| cx.post(messages_path(room)).as_user(m).json(body).send();
    let max = l.max_text_chars as usize;
    if (max * 4 + 100) as u64 <= l.max_body_bytes {
        post(json!({"text": "é".repeat(max)})).await?.ok(201)?;
    }
    post(json!({"text": "x".repeat(max + 1)}))
        .await?
        .err(400, "invalid_request")?;
    post(
        json!({"text": "x", "kind": "story", "title": "t".repeat(l.max_title_chars as usize + 1)}),
    )
    .await?
    .err(400, "invalid_request")?;
    post(json!({"text": "x", "client_key": "k".repeat(l.max_client_key_len as usize + 1)}))
        .await?
        .err(400, "invalid_request")?;
    let big = vec![b' '; l.max_body_bytes as usize + 1];
    let r = cx
        .post(messages_path(room))
        .as_user(m)
        .raw(big, Some("application/json"))
        .send()
        .await?;
    r.err(413, "payload_too_large")?;
    let r = cx
        .get(format!(
            "{}?limit={}",
            messages_path(room),
            l.history_limit_max + 1
        ))
        .as_user(m)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    let r = cx
        .get(format!("/v1/rooms?q=x&limit={}", l.rooms_limit_max + 1))
        .as_user(m)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    let r = cx
        .get(format!(
            "/v1/search/messages?q=x&limit={}",
            l.search_limit_max + 1
        ))
        .as_user(m)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.manager)
        .json(json!({"name": "n".repeat(l.max_name_chars as usize + 1), "category": cx.w.category}))
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    Ok(())
}

async fn buckets_answer_429_without_effect(cx: &Ctx) -> Check {
    let l = &cx.limits;
    let burst = l.post_burst as usize;
    if burst > 200 {
        return Err(Flaw::NotPossible(format!(
            "post_burst {burst} is too large to exhaust quickly"
        )));
    }
    let users = cx.actors(1).await?;
    let u = &users[0];
    let room = cx
        .room(json!({"privacy": "open", "members": [u.principal()]}))
        .await?;
    // Let the bucket refill if the account was used before.
    let refill = (burst as f64 / l.post_rate_per_s.max(0.1)).ceil() as u64;
    if cx.w.admin.is_none() {
        cx.can_wait("post bucket refill", refill)?;
        tokio::time::sleep(std::time::Duration::from_secs(refill)).await;
    }
    let n = burst + 10;
    let sends = (0..n).map(|i| {
        cx.post(messages_path(room))
            .as_user(u)
            .json(json!({ "text": format!("burst {i}") }))
            .no_retry()
            .send()
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut created = 0;
    let mut limited = None;
    for a in answers {
        let r = a?;
        match r.status {
            201 => created += 1,
            429 => limited = Some(r),
            s => return Err(Flaw::Fail(format!("unexpected status {s} in a burst"))),
        }
    }
    let r = limited.ok_or_else(|| {
        Flaw::Fail(format!(
            "{n} posts at once with post_burst {burst}: none was rate limited"
        ))
    })?;
    r.err(429, "rate_limited")?;
    cx.shape("error.rate_limited", &r.body);
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Flaw::Fail("429 without a whole-second Retry-After".into()))?;
    check!(ra >= 1, "Retry-After {ra} is below 1");
    check!(
        r.body["error"]["retry_after_ms"].is_u64(),
        "429 body lacks retry_after_ms"
    );
    let stored = cx.all_messages(&u.token, room).await?.len();
    check_eq!(stored, created, "messages stored vs posts answered 201");
    request_bucket_answers_429(cx, u).await
}

/// The request bucket: a burst of cheap requests well over `request_burst`
/// meets a 429, and a refused presence change has no effect.
async fn request_bucket_answers_429(cx: &Ctx, u: &crate::ctx::User) -> Check {
    let burst = cx.limits.request_burst as usize;
    if burst > 2000 || cx.w.admin.is_none() {
        // Exhausting a shared account's bucket would disturb the other tests.
        return Ok(());
    }
    let set = |state: &'static str| {
        cx.put("/v1/me/presence")
            .as_user(u)
            .json(json!({ "state": state }))
            .no_retry()
            .send()
    };
    set("available").await?.ok(200)?;
    let mut limited = false;
    for _ in 0..4 {
        let batch = (0..burst / 2).map(|_| set("busy"));
        for r in futures_util::future::join_all(batch).await {
            match r?.status {
                200 => {}
                429 => limited = true,
                s => {
                    return Err(Flaw::Fail(format!(
                        "unexpected status {s} in a request burst"
                    )))
                }
            }
        }
        if limited {
            break;
        }
    }
    check!(
        limited,
        "{} requests at once with request_burst {burst}: none was rate limited",
        burst * 2
    );
    // Refused while the bucket is empty: no effect.
    let r = set("away").await?;
    if r.status == 429 {
        r.err(429, "rate_limited")?;
        let me = cx.get("/v1/me").as_user(u).send().await?;
        check_eq!(
            me.ok(200)?["presence"].as_str(),
            Some("busy"),
            "presence after a refused change"
        );
    }
    Ok(())
}

async fn error_bodies_have_the_documented_shape(cx: &Ctx) -> Check {
    let r = cx
        .get("/v1/rooms/999999999999")
        .as_user(&cx.w.member)
        .send()
        .await?;
    r.err(404, "room_not_found")?;
    cx.shape("error.room_not_found", &r.body);
    let r = cx.get("/v1/me").send().await?;
    r.err(401, "unauthenticated")?;
    let r = cx
        .get("/v1/no/such/path")
        .as_user(&cx.w.member)
        .send()
        .await?;
    r.err(404, "not_found")?;
    let r = cx.delete("/v1/limits").send().await?;
    check!(
        r.status == 405 || r.status == 401,
        "DELETE /v1/limits answered {}",
        r.status
    );
    if r.status == 405 {
        r.err(405, "method_not_allowed")?;
    }
    let room = open_room(cx).await?;
    let r = cx
        .post(messages_path(room))
        .as_user(&cx.w.member)
        .json(json!({"texts": "x"}))
        .send()
        .await?;
    error_shape(&r.body)?;
    check!(r.field().is_some(), "unknown_field without `field`");
    Ok(())
}

async fn body_checks_happen_in_order(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    let m = &cx.w.member;
    let l = &cx.limits;
    let send = |bytes: Vec<u8>, ct: Option<&'static str>| {
        cx.post(messages_path(room))
            .as_user(m)
            .raw(bytes, ct)
            .send()
    };
    // Wrong content type beats everything else.
    let mut huge_bad = vec![0xff; l.max_body_bytes as usize + 10];
    huge_bad[0] = b'{';
    send(huge_bad.clone(), Some("text/plain"))
        .await?
        .err(415, "unsupported_media_type")?;
    // Size beats UTF-8.
    send(huge_bad, Some("application/json"))
        .await?
        .err(413, "payload_too_large")?;
    // UTF-8 beats JSON syntax.
    let r = send(b"{\"text\": \"\xff\xfe".to_vec(), Some("application/json")).await?;
    r.err(400, "invalid_utf8")?;
    cx.shape("error.invalid_utf8", &r.body);
    // A non-object or trailing data is malformed.
    send(b"[1,2]".to_vec(), Some("application/json"))
        .await?
        .err(400, "malformed_json")?;
    send(b"{\"text\":\"a\"} x".to_vec(), Some("application/json"))
        .await?
        .err(400, "malformed_json")?;
    // Unknown field beats missing field.
    send(b"{\"colour\": 1}".to_vec(), Some("application/json"))
        .await?
        .err(400, "unknown_field")?;
    let r = send(b"{}".to_vec(), Some("application/json")).await?;
    r.err(400, "invalid_request")?;
    cx.shape("error.invalid_request", &r.body);
    send(b"{\"text\": 5}".to_vec(), Some("application/json"))
        .await?
        .err(400, "invalid_request")?;
    // Syntax beats unknown fields, even when the unknown field comes first.
    send(b"{\"colour\": 1,".to_vec(), Some("application/json"))
        .await?
        .err(400, "malformed_json")?;
    Ok(())
}

async fn refused_requests_change_nothing(cx: &Ctx) -> Check {
    let room = open_room(cx).await?;
    cx.say(&cx.w.member, room, "before").await?;
    let before = count(cx, room).await?;
    let m = &cx.w.member;
    for body in [
        json!({}),
        json!({"text": ""}),
        json!({"text": "x", "kind": "story"}),
    ] {
        let r = cx
            .post(messages_path(room))
            .as_user(m)
            .json(body)
            .send()
            .await?;
        check!(r.status >= 400, "a bad post was accepted: {}", r.status);
    }
    check_eq!(
        count(cx, room).await?,
        before,
        "messages after refused posts"
    );
    let get = || {
        cx.get(format!("/v1/rooms/{room}"))
            .as_user(&cx.w.manager)
            .send()
    };
    let room_before = get().await?.ok(200)?.clone();
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"description": "changed", "privacy": "nonsense"}))
        .send()
        .await?;
    check!(r.status == 400, "bad PATCH answered {}", r.status);
    let room_after = get().await?.ok(200)?.clone();
    check_eq!(room_after, room_before, "room after a refused PATCH");
    Ok(())
}

async fn operations_need_a_bearer_token(cx: &Ctx) -> Check {
    let r = cx.get("/v1/me").send().await?;
    r.err(401, "unauthenticated")?;
    let www = r.header("www-authenticate").unwrap_or("");
    check!(
        www.starts_with("Bearer"),
        "401 without WWW-Authenticate: Bearer ({www:?})"
    );
    cx.shape("error.unauthenticated", &r.body);
    let r = cx.get("/v1/me").bearer("not-a-token").send().await?;
    r.err(401, "unauthenticated")?;
    cx.get("/v1/limits").send().await?.ok(200)?;
    cx.get("/healthz").send().await?.ok(200)?;
    // The stream accepts the token as a query parameter.
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let ws = cx.base.replacen("http", "ws", 1);
    let url = format!("{ws}/v1/stream?endpoint={ep}&access_token={}", m.token);
    cx.log(format!("ws> open {ep} with access_token"));
    let (mut s, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| Flaw::Fail(format!("stream with access_token refused: {e}")))?;
    use futures_util::StreamExt;
    let first = tokio::time::timeout(cx.event_wait, s.next()).await;
    check!(
        matches!(&first, Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) if t.contains("\"ready\"")),
        "no ready frame on a stream authenticated by access_token: {first:?}"
    );
    // Without a token it is refused.
    let url = format!("{ws}/v1/stream?endpoint={ep}");
    check!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "a stream without a token was accepted"
    );
    Ok(())
}

async fn tokens_are_at_most_512_bytes(cx: &Ctx) -> Check {
    for u in [&cx.w.manager, &cx.w.member, &cx.w.presenter, &cx.w.outsider] {
        check!(u.token.len() <= 512, "token of {} bytes", u.token.len());
    }
    if let Some(pw) = &cx.w.member.password {
        let r = cx
            .post("/v1/auth/token")
            .json(json!({"user": cx.w.member.name, "password": pw}))
            .send()
            .await?;
        let t = r.ok(200)?["token"].as_str().unwrap_or("");
        check!(
            !t.is_empty() && t.len() <= 512,
            "token of {} bytes",
            t.len()
        );
    }
    Ok(())
}

async fn sign_in_with_password(cx: &Ctx) -> Check {
    let u = &cx.w.member;
    let pw = u
        .password
        .clone()
        .setup("needs the member's password in the fixtures")?;
    let r = cx
        .post("/v1/auth/token")
        .json(json!({"user": u.name, "password": pw}))
        .send()
        .await?;
    let v = r.ok(200)?.clone();
    cx.shape("token", &v);
    check_eq!(v["user"].as_str(), Some(u.name.as_str()), "user");
    check!(v["expires_at"].is_string(), "no expires_at");
    let token = v["token"].as_str().unwrap_or("");
    let me = cx.get("/v1/me").bearer(token).send().await?;
    check_eq!(
        me.ok(200)?["user"].as_str(),
        Some(u.name.as_str()),
        "/v1/me"
    );
    let wrong = cx
        .post("/v1/auth/token")
        .json(json!({"user": u.name, "password": format!("{pw}-wrong")}))
        .send()
        .await?;
    wrong.err(401, "unauthenticated")?;
    let unknown = cx
        .post("/v1/auth/token")
        .json(json!({"user": cx.name("nobody"), "password": pw}))
        .send()
        .await?;
    unknown.err(401, "unauthenticated")?;
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["error"]["request_id"] = Value::Null;
        v
    };
    check_eq!(
        strip(&wrong.body),
        strip(&unknown.body),
        "answers for a wrong password and an unknown user differ"
    );
    Ok(())
}

async fn disabled_users_lose_tokens_and_streams(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let u = cx.fresh_users(1).await?.remove(0);
    let ep = cx.endpoint(&u);
    let (mut s, _) = cx.stream(&u, &ep, &[]).await?;
    cx.patch(format!("/v1/admin/users/{}", u.name))
        .bearer(&admin)
        .json(json!({"disabled": true}))
        .send()
        .await?
        .setup(200, "disable the user")?;
    cx.get("/v1/me")
        .as_user(&u)
        .send()
        .await?
        .err(401, "unauthenticated")?;
    let code = s.closed(cx.event_wait).await?;
    check_eq!(code, Some(4001), "close code of a disabled user's stream");
    // Deleting works the same way.
    let v = cx.fresh_users(1).await?.remove(0);
    cx.delete(format!("/v1/admin/users/{}", v.name))
        .bearer(&admin)
        .send()
        .await?
        .setup(204, "delete the user")?;
    cx.get("/v1/me")
        .as_user(&v)
        .send()
        .await?
        .err(401, "unauthenticated")?;
    Ok(())
}

async fn disabled_policy_answers_policy_disabled(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let off = format!("{}-off", cx.ns);
    cx.put(format!("/v1/admin/policies/{off}"))
        .bearer(&admin)
        .json(json!({"enabled": false}))
        .send()
        .await?
        .setup(200, "create a disabled policy")?;
    let u = cx.fresh_users(1).await?.remove(0);
    cx.get("/v1/me").as_user(&u).send().await?.ok(200)?;
    cx.patch(format!("/v1/admin/users/{}", u.name))
        .bearer(&admin)
        .json(json!({"policy": off}))
        .send()
        .await?
        .setup(200, "give the user the disabled policy")?;
    let r = cx.get("/v1/me").as_user(&u).send().await?;
    r.err(403, "policy_disabled")?;
    cx.shape("error.policy_disabled", &r.body);
    let room = open_room(cx).await?;
    cx.get(messages_path(room))
        .as_user(&u)
        .send()
        .await?
        .err(403, "policy_disabled")?;
    cx.put(format!("/v1/admin/policies/{off}"))
        .bearer(&admin)
        .json(json!({"enabled": true}))
        .send()
        .await?
        .setup(200, "enable the policy")?;
    cx.get("/v1/me").as_user(&u).send().await?.ok(200)?;
    Ok(())
}

async fn healthz_answers_ok(cx: &Ctx) -> Check {
    let r = cx.get("/healthz").send().await?;
    check_eq!(r.ok(200)?["status"].as_str(), Some("ok"), "status");
    Ok(())
}

async fn metrics_are_prometheus_text(cx: &Ctx) -> Check {
    let r = cx.get("/metrics").send().await?;
    r.ok(200)?;
    let text = String::from_utf8_lossy(&r.raw);
    check!(
        text.lines().any(|l| l.starts_with("# TYPE "))
            || text.lines().any(|l| l.starts_with("# HELP ")),
        "no # TYPE or # HELP lines in /metrics"
    );
    Ok(())
}
