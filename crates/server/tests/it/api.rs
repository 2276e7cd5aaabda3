//! The app backend's HTTP API against Postgres and SQLite, including bad input.

use rendezvous::Mode;
use serde_json::json;

use crate::support::{API_KEY, api, both_backends, config_for, start, test_config};

both_backends!(users_crud, |backend| {
    let srv = start(config_for(backend).await, Mode::Serve).await;
    let k = Some(API_KEY);
    let created = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"Ada","gender":"female"}"#), k).await;
    assert_eq!(created.status, 201);
    let user = created.json();
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(user["display_name"], "Ada");
    let got = api(srv.addr, "GET", &format!("/api/users/{id}"), None, k).await;
    assert_eq!((got.status, got.json()["gender"].clone()), (200, json!("female")));
    let patched = api(srv.addr, "PATCH", &format!("/api/users/{id}"), Some(r#"{"bio":"hello"}"#), k).await;
    assert_eq!((patched.status, patched.json()["bio"].clone()), (200, json!("hello")));
    assert_eq!(api(srv.addr, "GET", &format!("/api/users/{id}"), None, k).await.json()["bio"], "hello");
    assert_eq!(api(srv.addr, "DELETE", &format!("/api/users/{id}"), None, k).await.status, 204);
    let gone = api(srv.addr, "GET", &format!("/api/users/{id}"), None, k).await;
    assert_eq!((gone.status, gone.json()["error"]["code"].clone()), (404, json!("not_found")));
});

both_backends!(bad_input_gets_clear_json_errors, |backend| {
    let srv = start(config_for(backend).await, Mode::Serve).await;
    let k = Some(API_KEY);
    // method, path, body, API key, expected status, expected error code
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/api/users", Some(r#"{"display_name":"A"}"#), None, 401, "unauthorized"),
        ("POST", "/api/users", Some(r#"{"display_name":"A"}"#), Some("wrong-key-wrong-key"), 401, "unauthorized"),
        ("POST", "/api/users", Some("{nope"), k, 400, "bad_request"),
        ("POST", "/api/users", None, k, 400, "bad_request"),
        ("POST", "/api/users", Some(r#"{"display_name":"A","age":3}"#), k, 400, "bad_request"),
        ("POST", "/api/users", Some(r#"{"display_name":5}"#), k, 400, "bad_request"),
        ("POST", "/api/users", Some(r#"{"display_name":""}"#), k, 422, "invalid"),
        ("POST", "/api/users", Some(r#"{"display_name":"A","selfie_url":"ftp://x"}"#), k, 422, "invalid"),
        ("POST", "/api/users", Some(r#"{"display_name":"A","gender":"robot"}"#), k, 422, "invalid"),
        ("PATCH", "/api/users/nobody", Some(r#"{"bio":"x"}"#), k, 404, "not_found"),
        ("POST", "/api/users/nobody/sessions", None, k, 404, "not_found"),
        ("DELETE", "/api/sessions/nobody", None, k, 404, "not_found"),
        ("GET", "/api/users/nobody/calls", None, k, 404, "not_found"),
        ("PUT", "/api/users", None, k, 405, "method_not_allowed"),
    ];
    for (method, path, body, key, status, code) in cases {
        let r = api(srv.addr, method, path, body, key).await;
        assert_eq!(r.status, status, "{method} {path} {body:?}");
        assert_eq!(r.json()["error"]["code"], code, "{method} {path} {body:?}");
    }
    // Field-level errors name the field.
    let r = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":5}"#), k).await;
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("display_name"));
    let r = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"A","gender":"robot"}"#), k).await;
    assert_eq!(r.json()["error"]["field"], "gender");
    let id = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"A"}"#), k).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, field) in [("limit=0", "limit"), ("limit=abc", "limit"), ("before=yesterday", "before")] {
        let r = api(srv.addr, "GET", &format!("/api/users/{id}/calls?{query}"), None, k).await;
        assert_eq!((r.status, r.json()["error"]["field"].clone()), (400, json!(field)), "{query}");
    }
    let r = api(srv.addr, "GET", &format!("/api/users/{id}/calls?colour=red"), None, k).await;
    assert_eq!(r.status, 400);
    let huge = format!(r#"{{"display_name":"A","bio":"{}"}}"#, "x".repeat(70_000));
    let r = api(srv.addr, "POST", "/api/users", Some(&huge), k).await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (413, json!("payload_too_large")));
    let r = api(srv.addr, "POST", &format!("/api/users/{id}/sessions"), Some(r#"{"ttl_seconds":0}"#), k).await;
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (422, json!("ttl_seconds")));
});

both_backends!(call_history_is_listed_newest_first, |backend| {
    let srv = start(config_for(backend).await, Mode::Serve).await;
    let store = srv.store.clone().unwrap();
    let k = Some(API_KEY);
    let a = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"A"}"#), k).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"B"}"#), k).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = store.start_call(&a, &b).await.unwrap();
    store.end_call(&first, "hangup", Some(&a)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await; // distinct start times on the wall clock
    let second = store.start_call(&b, &a).await.unwrap();
    let r = api(srv.addr, "GET", &format!("/api/users/{a}/calls?limit=10"), None, k).await;
    assert_eq!(r.status, 200);
    let calls = r.json()["calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], json!(second.id));
    assert_eq!(calls[1]["end_reason"], "hangup");
    let page = api(srv.addr, "GET", &format!("/api/users/{a}/calls?limit=1"), None, k).await.json();
    assert_eq!(page["calls"].as_array().unwrap().len(), 1);
});

#[tokio::test]
async fn api_without_a_key_is_disabled_and_guest_sign_in_can_be_off() {
    let mut cfg = test_config();
    cfg.api.key = String::new();
    cfg.api.guest_sign_in = Some(false);
    let srv = start(cfg, Mode::Serve).await;
    let r = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"A"}"#), Some("anything-at-all-123")).await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (503, json!("unavailable")));
    assert_eq!(api(srv.addr, "POST", "/api/guest", None, None).await.status, 404);
}
