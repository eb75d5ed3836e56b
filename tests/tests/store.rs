//! The app on Spin's Redis key-value store when that store stops answering mid-run: the run
//! fails with a reason the status and the health show, and the connector's lease is freed, so
//! the next run goes on at once and archives every text.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use archiver_tests::{RedisServer, SourceSimulator};

use crate::pipeline::{
    TIMER, builder, create_connector, fire_timer, folder_contents, status_of, three_texts,
};
use crate::util::{JMAP_SESSION_URL, Jmap};

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_store_that_stops_mid_run_fails_the_run_with_its_reason_and_frees_the_connector() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let texts = three_texts(&source, "outage");
    let redis = Arc::new(RedisServer::start().expect("redis-server starts"));
    // Steps of one message: the page is listed again by each step.
    let app = builder(&source, "http://127.0.0.1:18080", JMAP_SESSION_URL)
        .variable("step_max_items", "1")
        .redis(redis.clone())
        .unwrap()
        .build()
        .unwrap();
    let connector = "att-outage";
    create_connector(&app, &source, connector).await;

    // The second listing of the page finds the store gone; it is back three seconds later,
    // its data kept, as after a Redis restart or failover.
    let listings = Arc::new(AtomicUsize::new(0));
    let (seen, server) = (listings.clone(), redis.clone());
    app.rewrite_outbound(
        &format!("{}/v1/messages", source.base_url()),
        1,
        move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) == 1 {
                server.stop_keeping_data().expect("redis-server stops");
                let server = server.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(3));
                    server.start_again().expect("redis-server starts again");
                });
            }
            None
        },
    );
    let first = fire_timer(&app, TIMER).await.unwrap();
    assert!(
        listings.load(Ordering::SeqCst) >= 2,
        "the store never stopped"
    );
    let reason = first.expect_err("the run cannot succeed without its store");
    assert!(reason.contains("key-value store"), "{reason}");

    let status = status_of(&app, connector).await;
    let run = &status["runs"][0];
    assert_eq!(run["state"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("key-value store"), "{error}");
    let failure = &status["health"]["last_run_failure"];
    assert_eq!(failure["run"], run["id"], "{status}");
    assert_eq!(failure["reason"], run["error"]);
    let lease = app
        .kv_get("default", &archiver_core::lease::lease_key(connector))
        .unwrap();
    let lease = archiver_core::lease::decode(lease.as_deref());
    assert!(
        lease
            .as_ref()
            .is_none_or(|lease| lease.expires_at <= chrono::Utc::now()),
        "the failed run still holds the connector: {lease:?}"
    );

    // The lease is free: the next run starts at once and archives the window whole.
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    for text in &texts {
        assert!(delivered.contains_key(text), "{text} was not archived");
    }
    let status = status_of(&app, connector).await;
    assert_eq!(
        status["health"]["last_run_failure"],
        serde_json::Value::Null
    );
    for run in status["runs"].as_array().unwrap() {
        assert_eq!(run["invariant_holds"], true, "{run}");
    }
}
