//! The store suite, run against Postgres and against the SQLite default.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, fresh_database, open, open_with, two_instances};
use rendezvous_store::both_backends;

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_store::{DatabaseConfig, NewUser, StoreConfig, StoreError, UserPatch};

fn ada() -> NewUser {
    NewUser {
        display_name: "Ada".into(),
        gender: Some("female".into()),
        selfie_url: Some("https://img.example.com/ada.jpg".into()),
        socials: Some(serde_json::from_str(r#"{"instagram":"@ada"}"#).unwrap()),
        ..Default::default()
    }
}

both_backends!(users_round_trip_and_validate, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    assert_eq!(store.user(&u.id).await.unwrap().unwrap(), u);
    let patch: UserPatch = serde_json::from_str(r#"{"bio":"hi","selfie_url":null}"#).unwrap();
    let changed = store.update_user(&u.id, patch).await.unwrap();
    assert_eq!(changed.bio, "hi");
    assert_eq!(changed.selfie_url, None);
    assert_eq!(store.user(&u.id).await.unwrap().unwrap().bio, "hi");
    let bad = NewUser { display_name: String::new(), ..ada() };
    assert!(matches!(store.create_user(bad).await, Err(StoreError::Invalid(i)) if i.field == "display_name"));
    store.delete_user(&u.id).await.unwrap();
    assert_eq!(store.user(&u.id).await.unwrap(), None);
    assert!(matches!(store.delete_user(&u.id).await, Err(StoreError::NotFound("user"))));
});

both_backends!(sessions_authenticate_revoke_and_expire, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    let issued = store.issue_session(&u.id, None, Some("tests".into()), None).await.unwrap();
    assert!(issued.token.len() >= 40, "token must carry at least 128 bits");
    // Miss (database), then hit (session LRU).
    assert_eq!(store.authenticate(&issued.token).await.unwrap().unwrap().user_id, u.id);
    assert_eq!(store.authenticate(&issued.token).await.unwrap().unwrap().session_id, issued.session.id);
    let s = store.stats().sessions;
    assert_eq!((s.hits, s.misses, s.size), (1, 1, 1));
    assert_eq!(store.db().statement_count("session_by_hash"), 1);
    assert_eq!(store.authenticate("rv_not-a-token").await.unwrap(), None);
    store.revoke_session(&issued.session.id).await.unwrap();
    assert_eq!(store.authenticate(&issued.token).await.unwrap(), None);
    assert!(matches!(store.revoke_session(&issued.session.id).await, Err(StoreError::NotFound(_))));
    let short = store.issue_session(&u.id, Some(Duration::from_millis(1)), None, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // wall-clock expiry of a stored row, not a test wait
    assert_eq!(store.authenticate(&short.token).await.unwrap(), None);
    let banned = store.issue_session(&u.id, None, None, None).await.unwrap();
    store.update_user(&u.id, serde_json::from_str(r#"{"banned":true}"#).unwrap()).await.unwrap();
    assert_eq!(store.authenticate(&banned.token).await.unwrap(), None);
    assert!(matches!(store.issue_session("nobody", None, None, None).await, Err(StoreError::NotFound("user"))));
});

both_backends!(tokens_are_stored_only_as_hashes, |backend| {
    let db = fresh_database(backend).await;
    let store = open_with(db.clone(), StoreConfig::default(), Bus::in_process("t", &BusConfig { capacity: 8 })).await;
    let u = store.create_user(ada()).await.unwrap();
    let issued = store.issue_session(&u.id, None, None, None).await.unwrap();
    let sessions = store.sessions_of(&u.id).await.unwrap();
    assert_eq!(sessions.len(), 1);
    let dump = format!("{sessions:?}");
    assert!(!dump.contains(&issued.token));
    // Look at the raw row: 32 bytes of SHA-256, not the token.
    let url = db.effective_url();
    let raw: Vec<u8> = if backend == Backend::Postgres {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_one(&pool).await.unwrap()
    };
    assert_eq!(raw.len(), 32);
    assert_ne!(raw, issued.token.as_bytes());
});

both_backends!(user_cache_counts_hits_and_misses_exactly, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    for _ in 0..5 {
        store.user(&u.id).await.unwrap().unwrap();
    }
    let s = store.stats().users;
    assert_eq!((s.misses, s.hits), (1, 4));
    assert_eq!(store.db().statement_count("user_by_id"), 1);
    assert_eq!(store.user("missing").await.unwrap(), None);
    assert_eq!(store.user("missing").await.unwrap(), None);
    // The negative answer sits in the query cache, so only one more query ran.
    assert_eq!(store.db().statement_count("user_by_id"), 2);
});

both_backends!(one_thousand_concurrent_misses_make_one_query, |backend| {
    let store = open(backend).await;
    let mut tasks = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(1000));
    for _ in 0..1000 {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.user("no-such-user").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), None);
    }
    assert_eq!(store.db().statement_count("user_by_id"), 1);
    let q = store.stats().queries;
    assert_eq!(q.loads, 1);
    assert_eq!(q.hits + q.misses, 1000);
});

both_backends!(current_thread query_cache_expires_after_its_ttl, |backend| {
    let store = open(backend).await;
    let a = store.create_user(ada()).await.unwrap();
    let b = store.create_user(ada()).await.unwrap();
    let call = store.start_call(&a.id, &b.id).await.unwrap();
    assert_eq!(store.calls_of(&a.id, None, 10).await.unwrap()[0].id, call.id);
    assert_eq!(store.calls_of(&a.id, None, 10).await.unwrap().len(), 1);
    assert_eq!(store.db().statement_count("calls_of"), 1);
    // Jump the clock past the 60 s TTL; the database is only touched with real time running.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    tokio::time::resume();
    store.calls_of(&a.id, None, 10).await.unwrap();
    assert_eq!(store.db().statement_count("calls_of"), 1);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    store.calls_of(&a.id, None, 10).await.unwrap();
    assert_eq!(store.db().statement_count("calls_of"), 2);
    assert_eq!(store.stats().queries.expirations, 1);
});

both_backends!(writes_invalidate_call_lists, |backend| {
    let store = open(backend).await;
    let a = store.create_user(ada()).await.unwrap();
    let b = store.create_user(ada()).await.unwrap();
    assert!(store.calls_of(&a.id, None, 10).await.unwrap().is_empty());
    let call = store.start_call(&a.id, &b.id).await.unwrap();
    store.end_call(&call, "hangup", Some(&a.id)).await.unwrap();
    let calls = store.calls_of(&b.id, None, 10).await.unwrap();
    assert_eq!(calls[0].end_reason.as_deref(), Some("hangup"));
    assert_eq!(calls[0].ended_by.as_deref(), Some(a.id.as_str()));
    assert!(calls[0].duration_ms.is_some_and(|d| d >= 0));
    assert_eq!(store.calls_of(&a.id, None, 10).await.unwrap().len(), 1);
});

both_backends!(cooldowns_blocks_and_reports, |backend| {
    let store = open(backend).await;
    let a = store.create_user(ada()).await.unwrap();
    let b = store.create_user(ada()).await.unwrap();
    assert!(!store.in_cooldown(&a.id, &b.id).await.unwrap());
    store.put_cooldown(&b.id, &a.id, rendezvous_store::now_ms() + 60_000).await.unwrap();
    assert!(store.in_cooldown(&a.id, &b.id).await.unwrap());
    store.block(&a.id, &b.id).await.unwrap();
    assert_eq!(*store.blocks_of(&b.id).await.unwrap(), vec![a.id.clone()]);
    store.report(&a.id, &b.id, "spam", Some("sent links")).await.unwrap();
    store.report(&b.id, &a.id, "other", None).await.unwrap();
    let reports = store.reports(None, 10).await.unwrap();
    assert_eq!(reports.len(), 2);
    let spam = reports.iter().find(|r| r.reason == "spam").unwrap();
    assert_eq!((spam.reporter.as_str(), spam.details.as_deref()), (a.id.as_str(), Some("sent links")));
    assert_eq!(store.reports(None, 1).await.unwrap().len(), 1, "limit holds");
    store.put_cooldown(&a.id, &b.id, 1).await.unwrap();
    assert_eq!(store.cleanup().await.unwrap().1, 1);
});

both_backends!(cooldown_partners_load_once_and_follow_writes, |backend| {
    let store = open(backend).await;
    let a = store.create_user(ada()).await.unwrap();
    let b = store.create_user(ada()).await.unwrap();
    let c = store.create_user(ada()).await.unwrap();
    assert!(store.cooldowns_of(&a.id).await.unwrap().is_empty());
    let until = rendezvous_store::now_ms() + 60_000;
    // Stored with user_a < user_b: one pair where `a` sorts first, one where it may not.
    store.put_cooldown(&b.id, &a.id, until).await.unwrap();
    store.put_cooldown(&c.id, &a.id, until + 1).await.unwrap();
    let mut partners = store.cooldowns_of(&a.id).await.unwrap().to_vec();
    partners.sort();
    let mut want = vec![(b.id.clone(), until), (c.id.clone(), until + 1)];
    want.sort();
    assert_eq!(partners, want, "the write dropped the cached empty list");
    assert_eq!(*store.cooldowns_of(&b.id).await.unwrap(), vec![(a.id.clone(), until)]);
    // A cooldown that has ended is not listed, cached or not.
    store.put_cooldown(&a.id, &b.id, 1).await.unwrap();
    assert_eq!(*store.cooldowns_of(&a.id).await.unwrap(), vec![(c.id.clone(), until + 1)]);
    let misses = store.stats().queries.misses;
    store.cooldowns_of(&a.id).await.unwrap();
    assert_eq!(store.stats().queries.misses, misses, "served from the query cache");
});

both_backends!(another_instance_drops_its_copy_after_a_write, |backend| {
    let (a, b, tracker, stop) = two_instances(backend).await;
    let u = a.create_user(ada()).await.unwrap();
    assert_eq!(a.user(&u.id).await.unwrap().unwrap().bio, "");
    assert_eq!(a.stats().users.size, 1);
    b.update_user(&u.id, serde_json::from_str(r#"{"bio":"changed on b"}"#).unwrap()).await.unwrap();
    // Delivery is asynchronous: wait for the copy to go, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.stats().users.size != 0 {
        assert!(tokio::time::Instant::now() < deadline, "instance a kept its stale copy");
        tokio::task::yield_now().await;
    }
    assert_eq!(a.user(&u.id).await.unwrap().unwrap().bio, "changed on b");
    stop.cancel();
    tracker.close();
    tracker.wait().await;
});

both_backends!(revocation_reaches_every_instance, |backend| {
    let (a, b, _tracker, stop) = two_instances(backend).await;
    let mut revoked_on_a = a.revocations();
    let u = a.create_user(ada()).await.unwrap();
    let issued = a.issue_session(&u.id, None, None, None).await.unwrap();
    assert!(a.authenticate(&issued.token).await.unwrap().is_some());
    b.revoke_session(&issued.session.id).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(1), revoked_on_a.recv())
        .await
        .expect("no revocation within 1 s")
        .unwrap();
    assert_eq!(r.session_id.as_deref(), Some(issued.session.id.as_str()));
    assert_eq!(a.authenticate(&issued.token).await.unwrap(), None, "a still trusted its cached session");
    stop.cancel();
});

both_backends!(last_active_is_written_behind_in_one_batch, |backend| {
    let store = open(backend).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(store.create_user(ada()).await.unwrap().id);
    }
    let before = store.db().stored_last_active(&ids[0]).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await; // let the wall clock move past `before`
    for _ in 0..50 {
        for id in &ids {
            store.touch(id);
        }
    }
    assert_eq!(store.db().stored_last_active(&ids[0]).await.unwrap().unwrap(), before, "no write per touch");
    assert_eq!(store.stats().activity.pending, 20);
    assert_eq!(store.flush_activity().await.unwrap(), 20);
    assert_eq!(store.db().statement_count("touch_many"), 1);
    assert!(store.db().stored_last_active(&ids[0]).await.unwrap().unwrap() > before);
});

both_backends!(shutdown_flushes_the_write_behind_buffer, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    let before = store.db().stored_last_active(&u.id).await.unwrap().unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    store.spawn_background(&tracker, stop.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    store.touch(&u.id);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    assert!(store.db().stored_last_active(&u.id).await.unwrap().unwrap() > before);
});

both_backends!(concurrent_writers_never_wait_for_a_lock, |backend| {
    // With SQLite's busy handler off, a write that finds another connection holding the
    // write lock fails at once with `database is locked`; it must never happen, because
    // SQLite writes queue for the one writer connection instead.
    let db = DatabaseConfig { sqlite_busy_timeout_ms: 0, ..fresh_database(backend).await };
    let store = open_with(db, StoreConfig::default(), Bus::in_process("t", &BusConfig { capacity: 64 })).await;
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for i in 0..10 {
                let u = store.create_user(NewUser { display_name: format!("w{w}-{i}"), ..ada() }).await?;
                store.issue_session(&u.id, None, None, None).await?;
                store.update_user(&u.id, serde_json::from_str(r#"{"bio":"busy"}"#).unwrap()).await?;
                store.record_activity([(u.id.as_str(), rendezvous_store::now_ms())]);
                store.flush_activity().await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap_or_else(|e| panic!("a concurrent write failed: {e}"));
    }
    let pool = store.stats().pool;
    if backend == Backend::Sqlite {
        assert_eq!((pool.writers, pool.writers_max), (1, 1), "SQLite writes use exactly one connection");
        assert_eq!(pool.max, DatabaseConfig::default().max_connections + 1);
    } else {
        assert_eq!(pool.writers_max, pool.max);
    }
});

both_backends!(errors_keep_their_cause_for_every_waiter, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    store.touch(&u.id);
    store.db().close().await;
    // Concurrent lookups (loaders and waiters alike) must all see the pool's own error.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.user("no-such-user").await
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(&e, StoreError::Unavailable(c) if matches!(**c, sqlx::Error::PoolClosed)), "{e:?}");
        let source = std::error::Error::source(&e).expect("a cause").to_string();
        assert_eq!(source, sqlx::Error::PoolClosed.to_string());
    }
    // A failed flush keeps its rows for the next try.
    assert!(store.flush_activity().await.unwrap_err().is_unavailable());
    assert_eq!(store.stats().activity.pending, 1);
});

both_backends!(activity_batches_keep_the_latest_time_and_flush_in_chunks, |backend| {
    let store = open(backend).await;
    let u = store.create_user(ada()).await.unwrap();
    let before = store.db().stored_last_active(&u.id).await.unwrap().unwrap();
    // 2,001 unknown users (their UPDATEs match nothing) plus one real one, seen twice.
    let ghosts: Vec<String> = (0..2001).map(|i| format!("ghost-{i}")).collect();
    let seen = ghosts.iter().map(|g| (g.as_str(), before + 1)).chain([(u.id.as_str(), before + 50)]);
    store.record_activity(seen.chain([(u.id.as_str(), before + 10)]));
    assert_eq!(store.stats().activity.pending, 2002);
    assert_eq!(store.flush_activity().await.unwrap(), 2002);
    assert_eq!(store.db().statement_count("touch_many"), 3, "1,000 rows per transaction");
    assert_eq!(store.db().stored_last_active(&u.id).await.unwrap(), Some(before + 50));
    assert_eq!(store.stats().activity.flushed, 2002);
});
