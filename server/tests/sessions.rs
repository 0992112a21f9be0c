//! Sign-in, browser sessions, CSRF, the sign-in limits and `/api/v1/me/tokens`, through the
//! router with `oneshot`, on SQLite.

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{json, Value};
use server::state::AppState;
use server::store::Role;
use std::net::SocketAddr;
use tower::ServiceExt;

/// One request with extra headers from the client address `peer`: (status, Set-Cookie
/// values, JSON body).
async fn send(
    st: &AppState,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
    peer: &str,
) -> (StatusCode, Vec<String>, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "ctl.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("request");
    let addr: SocketAddr = format!("{peer}:40000").parse().expect("addr");
    req.extensions_mut().insert(ConnectInfo(addr));
    let resp = server::app(st.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, cookies, v)
}

async fn sign_in(
    st: &AppState,
    name: &str,
    pw: &str,
    peer: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, Vec<String>, Value) {
    send(
        st,
        "POST",
        "/api/v1/session",
        extra,
        Some(json!({"name": name, "password": pw})),
        peer,
    )
    .await
}

/// The `name=value` of the cookie `name`.
fn cookie_pair(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
        .to_string()
}

#[tokio::test]
async fn a_session_cookie_is_strict_and_changes_need_the_csrf_token_and_our_origin() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    server::api::create_user(
        &st.store,
        "dana",
        Role::Operator,
        Some("a long enough password".into()),
    )
    .await
    .expect("user");
    let (s, cookies, me) = sign_in(&st, "dana", "a long enough password", "10.0.0.1", &[]).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    let session = cookies
        .iter()
        .find(|c| c.starts_with("dctl_session="))
        .expect("session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(
        !session.contains("Secure"),
        "plain http without a trusted proxy: {session}"
    );
    let jar = cookie_pair(&cookies, "dctl_session");
    let csrf = me["csrf_token"].as_str().expect("csrf token").to_string();
    assert_eq!(me["user"], json!({"name": "dana", "role": "operator"}));

    // Reads work with the cookie alone; a change needs the CSRF token.
    let (s, _, v) = send(
        &st,
        "GET",
        "/api/v1/me/tokens",
        &[("cookie", &jar)],
        None,
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/me/tokens",
        &[("cookie", &jar)],
        Some(json!({})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/me/tokens",
        &[("cookie", &jar), ("x-csrf-token", "0000")],
        Some(json!({})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Another origin is refused even with the token.
    let evil = [
        ("cookie", jar.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", "http://evil.test"),
    ];
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/me/tokens",
        &evil,
        Some(json!({})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let cross = [
        ("cookie", jar.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("sec-fetch-site", "cross-site"),
    ];
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/me/tokens",
        &cross,
        Some(json!({})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Our own origin with the token: a token with the caller's role, which works as a bearer.
    let ok = [
        ("cookie", jar.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", "http://ctl.test"),
    ];
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/me/tokens",
        &ok,
        Some(json!({})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["role"], "operator");
    let bearer = v["token"].as_str().expect("token");
    let (s, v) = call(&st, "GET", "/api/v1/me", Some(bearer), None).await;
    assert_eq!(
        (s, v["user"]["name"].as_str()),
        (StatusCode::OK, Some("dana")),
        "{v}"
    );
    // /api/v1/tokens stays admin-only for the session.
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/tokens",
        &ok,
        Some(json!({"name": "x", "role": "admin"})),
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // Signing out ends the session.
    let (s, _, v) = send(&st, "DELETE", "/api/v1/session", &ok, None, "10.0.0.1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = send(
        &st,
        "GET",
        "/api/v1/me",
        &[("cookie", &jar)],
        None,
        "10.0.0.1",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_https() {
    let db = TestDb::sqlite();
    let mut config = test_config(&db);
    config.trusted_proxies = vec!["10.9.0.0/16".parse().expect("cidr")];
    let st = state_with(&db, config).await;
    server::api::create_user(
        &st.store,
        "erin",
        Role::Viewer,
        Some("a long enough password".into()),
    )
    .await
    .expect("user");
    let https = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "192.0.2.7"),
    ];
    let (s, cookies, v) = sign_in(&st, "erin", "a long enough password", "10.9.0.1", &https).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(cookie_pair(&cookies, "dctl_session").starts_with("dctl_session="));
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );
    // The same header from an untrusted peer does not make it Secure.
    let (_, cookies, _) = sign_in(&st, "erin", "a long enough password", "10.8.0.1", &https).await;
    assert!(cookies.iter().all(|c| !c.contains("Secure")), "{cookies:?}");
}

#[tokio::test]
async fn failed_sign_ins_are_limited_without_locking_out_the_owner() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    for (n, r) in [("frank", Role::Operator), ("gina", Role::Operator)] {
        server::api::create_user(&st.store, n, r, Some("a long enough password".into()))
            .await
            .expect("user");
    }
    // Frank signs in once from his browser: it gets a device cookie.
    let (s, cookies, _) = sign_in(&st, "frank", "a long enough password", "10.0.0.5", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let device = cookie_pair(&cookies, "dctl_device");
    // An attacker guesses Frank's password from many addresses until the per-user budget
    // is used up, and then is refused before any password check.
    let mut limited = false;
    for i in 0..20 {
        let (s, _, _) = sign_in(&st, "frank", "guess", &format!("10.1.0.{i}"), &[]).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
        limited |= s == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the per-user limit never applied");
    let (s, _, _) = sign_in(&st, "frank", "a long enough password", "10.2.0.1", &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "a new browser waits");
    // Frank's own browser still gets in; Gina is not affected.
    let (s, _, v) = sign_in(
        &st,
        "frank",
        "a long enough password",
        "10.0.0.5",
        &[("cookie", &device)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = sign_in(&st, "gina", "a long enough password", "10.3.0.1", &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Per address: one address guessing many names is stopped; other addresses are not.
    let mut limited = false;
    for i in 0..20 {
        let (s, _, _) = sign_in(&st, &format!("nobody{i}"), "guess", "10.4.0.1", &[]).await;
        limited |= s == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the per-address limit never applied");
    let (s, _, v) = sign_in(&st, "gina", "a long enough password", "10.4.0.2", &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_one_time_sign_in_link_works_once() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let user = server::api::create_user(&st.store, "hana", Role::Admin, None)
        .await
        .expect("user");
    let link = st
        .accounts
        .create_link(&user.id, std::time::Duration::from_secs(60))
        .await
        .expect("link");
    let body = json!({"link": link.expose()});
    let (s, _, v) = send(
        &st,
        "POST",
        "/api/v1/session",
        &[],
        Some(body.clone()),
        "10.0.0.9",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["role"], "admin");
    let (s, _, v) = send(&st, "POST", "/api/v1/session", &[], Some(body), "10.0.0.9").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}
