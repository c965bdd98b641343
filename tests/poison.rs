//! One client must not be able to eject workers: a worker's 5xx that the request itself caused
//! (vLLM's 500 "Cannot connect to host" for an image URL it cannot fetch) goes back to that
//! client and counts against nobody, while a worker that fails every request is still ejected
//! (by its failure rate across distinct requests). Fake workers are real processes on
//! 127.0.0.1; the gateway runs in-process.

mod common;

use common::*;
use std::time::Duration;

/// A request whose image the worker cannot fetch; `i` makes it a distinct request.
fn poison_request(i: usize) -> serde_json::Value {
    serde_json::json!({
        "model": "caprl",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("http://unreachable.invalid/{i}.png")}},
            {"type": "text", "text": "Describe the image."}
        ]}]
    })
}

/// Eject after 3 gateway failures in a row (the default), for 5 s: long enough that an
/// ejection would show in every check below.
const GATEWAY_FLAGS: &[&str] = &[
    "--eject-after-failures",
    "3",
    "--eject-base-secs",
    "5",
    "--health-interval-secs",
    "0.5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_poison_request_ejects_nobody_and_others_are_served() {
    let worker = FakeProc::start(0, &["--fail-remote-images", "true"]);
    let url = worker.url();
    let gw = Gateway::start(&args(std::slice::from_ref(&url), GATEWAY_FLAGS)).await;
    gw.wait_ready(Duration::from_secs(5)).await;
    let client = client();

    // The same poison request, 30 times in a row from one client: ten times the run that
    // ejected the only worker before.
    let mut poison_statuses = Vec::new();
    for _ in 0..30 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&poison_request(0))
            .send()
            .await
            .expect("answer");
        poison_statuses.push(r.status().as_u16());
        let body: serde_json::Value = r.json().await.expect("an error envelope");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Cannot connect to host")),
            "the worker's message reaches the client: {body}"
        );
    }
    assert!(
        poison_statuses.iter().all(|s| *s == 502),
        "{poison_statuses:?}"
    );
    // Not retried: each poison request reached the worker exactly once.
    assert_eq!(worker.stats().await["failed"].as_u64(), Some(30));

    // Everyone else is served at once, and the worker was never out of rotation.
    for _ in 0..10 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        metric(
            &gw.state,
            "caprl_gateway_worker_ejections_total",
            &[("worker", &url)]
        ),
        0.0
    );
    assert_eq!(gw.reachable("caprl").await, 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_poison_requests_among_real_traffic_eject_nobody() {
    let workers: Vec<FakeProc> = (0..2)
        .map(|_| FakeProc::start(0, &["--fail-remote-images", "true"]))
        .collect();
    let urls: Vec<String> = workers.iter().map(FakeProc::url).collect();
    let gw = Gateway::start(&args(&urls, GATEWAY_FLAGS)).await;
    gw.wait_ready(Duration::from_secs(5)).await;
    assert!(wait_for(Duration::from_secs(5), || async {
        gw.reachable("caprl").await == 2
    })
    .await
    .is_some());

    // A poison client cycling through 40 distinct bad URLs while a good client sends 40
    // ordinary requests, at the same time, over both workers.
    let poison = {
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            for i in 0..40 {
                let r = client.post(&url).json(&poison_request(i)).send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        })
    };
    let good = {
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r = client.post(&url).json(&text_request(2)).send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        })
    };
    let poison = poison.await.expect("poison client");
    let good = good.await.expect("good client");
    eprintln!(
        "poison: {} x 502; good: {} x 200",
        poison.iter().filter(|s| **s == 502).count(),
        good.iter().filter(|s| **s == 200).count()
    );
    assert!(poison.iter().all(|s| *s == 502), "{poison:?}");
    assert!(
        good.iter().all(|s| *s == 200),
        "every other request served: {good:?}"
    );
    for url in &urls {
        assert_eq!(
            metric(
                &gw.state,
                "caprl_gateway_worker_ejections_total",
                &[("worker", url)]
            ),
            0.0,
            "{url} was ejected"
        );
    }
    assert_eq!(gw.reachable("caprl").await, 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_failing_every_request_is_still_ejected() {
    let workers: Vec<FakeProc> = (0..2).map(|_| FakeProc::start(0, &[])).collect();
    let urls: Vec<String> = workers.iter().map(FakeProc::url).collect();
    let bad = urls[0].clone();
    let mut flags = GATEWAY_FLAGS.to_vec();
    flags.extend(["--policy", "round-robin", "--max-retries", "0"]);
    let gw = Gateway::start(&args(&urls, &flags)).await;
    gw.wait_ready(Duration::from_secs(5)).await;
    assert!(wait_for(Duration::from_secs(5), || async {
        gw.reachable("caprl").await == 2
    })
    .await
    .is_some());
    workers[0]
        .control(serde_json::json!({"fail_rate": 1.0, "fail_status": 500}))
        .await;
    let client = client();
    let mut failures = 0;
    for i in 0..40 {
        let mut req = text_request(2);
        req["messages"][0]["content"] = format!("Describe kite number {i}.").into();
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&req)
            .send()
            .await
            .expect("answer");
        if r.status() != 200 {
            assert_eq!(r.status(), 502);
            failures += 1;
        }
    }
    let ejections = metric(
        &gw.state,
        "caprl_gateway_worker_ejections_total",
        &[("worker", &bad)],
    );
    eprintln!("always-500 worker: {failures} of 40 failed before ejection; ejections {ejections}");
    assert!(ejections >= 1.0, "ejected by its failure rate");
    // Ejected after its fifth distinct failure (round-robin sends it every other request);
    // afterwards the healthy worker takes everything.
    assert!(failures <= 6, "{failures} failures");
    assert_eq!(
        metric(
            &gw.state,
            "caprl_gateway_worker_ejections_total",
            &[("worker", &urls[1])]
        ),
        0.0
    );
    gw.shutdown().await;
}
