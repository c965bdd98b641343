//! Fault tests of the worker pool on 127.0.0.1: three fake workers (real processes), the gateway
//! in-process. Each prints the figures it measured (`cargo test -- --nocapture` shows them).

mod common;

use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn three(extra: &[&str]) -> Vec<FakeProc> {
    (0..3).map(|_| FakeProc::start(0, extra)).collect()
}

fn urls(ws: &[FakeProc]) -> Vec<String> {
    ws.iter().map(FakeProc::url).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_no_request_and_comes_back() {
    let mut workers = three(&["--latency-ms", "5"]);
    let gw = Gateway::start(&args(&urls(&workers), &["--health-interval-secs", "0.5"])).await;
    gw.wait_ready(Duration::from_secs(5)).await;
    assert!(wait_for(Duration::from_secs(5), || async {
        gw.reachable("caprl").await == 3
    })
    .await
    .is_some());

    // Steady load: 8 clients sending non-streaming requests until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            gw.url("/v1/chat/completions"),
        );
        clients.push(tokio::spawn(async move {
            let client = client();
            // Bounded: at most 5,000 requests per client.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.post(&url).json(&text_request(4)).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[1].kill();
    let killed = Instant::now();
    let out = wait_for(Duration::from_secs(10), || async {
        gw.reachable("caprl").await == 2
    })
    .await;
    let out_after = out.expect("the dead worker leaves rotation").as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[1].restart();
    let back = wait_for(Duration::from_secs(10), || async {
        gw.reachable("caprl").await == 3
    })
    .await;
    let back_after = back.expect("the worker comes back").as_secs_f64();
    // Let the returned worker take some load.
    let before = workers[1].requests().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let served_after_return = workers[1].requests().await - before;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "killed worker: {ok} ok, {failed} failed; out of rotation {out_after:.2} s after the kill, back {back_after:.2} s after restart; {served_after_return} requests to it after; total {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(failed, 0, "no request may fail");
    assert!(ok > 100, "the load ran: {ok}");
    assert!(out_after < 5.0, "out of rotation within 5 s: {out_after}");
    assert!(
        served_after_return > 0,
        "the restarted worker gets requests again"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answering_500_is_ejected_then_restored() {
    let workers = three(&[]);
    let bad = workers[0].url();
    let gw = Gateway::start(&args(
        &urls(&workers),
        &[
            "--policy",
            "round-robin",
            "--eject-base-secs",
            "0.5",
            "--max-retries",
            "0",
        ],
    ))
    .await;
    gw.wait_ready(Duration::from_secs(5)).await;
    workers[0]
        .control(serde_json::json!({"fail_rate": 1.0, "fail_status": 500}))
        .await;
    let client = client();
    let mut statuses = Vec::new();
    for i in 0..30 {
        // Distinct requests: a 500 counts only through the worker's failure rate across
        // distinct requests, so that one client repeating a poison request ejects nobody
        // (tests/poison.rs).
        let mut req = text_request(2);
        req["messages"][0]["content"] = format!("Describe kite number {i}.").into();
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&req)
            .send()
            .await
            .expect("answer");
        statuses.push(r.status().as_u16());
    }
    let ejections = metric(
        &gw.state,
        "caprl_gateway_worker_ejections_total",
        &[("worker", &bad)],
    );
    let failures = statuses.iter().filter(|s| **s != 200).count();
    eprintln!("500s worker: {failures} of 30 requests failed (502) before ejection; ejections {ejections}");
    assert!(
        ejections >= 1.0,
        "ejected by its failure rate over distinct requests"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    assert!(
        failures <= 6,
        "ejection stops routing to it: {failures} failures"
    );
    // Healthy again: after the backoff a half-open trial succeeds and the worker is restored.
    workers[0]
        .control(serde_json::json!({"fail_rate": 0.0}))
        .await;
    let before = workers[0].requests().await;
    let restored = wait_for(Duration::from_secs(15), || async {
        let _ = client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await;
        metric(
            &gw.state,
            "caprl_gateway_worker_health",
            &[("worker", &bad)],
        ) == 1.0
    })
    .await;
    eprintln!("500s worker restored after {:?}", restored);
    assert!(restored.is_some(), "restored after a successful trial");
    for _ in 0..9 {
        client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
    }
    assert!(workers[0].requests().await > before + 2, "back in rotation");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_past_the_first_byte_timeout_is_retried_elsewhere() {
    let workers = three(&[]);
    workers[2]
        .control(serde_json::json!({"latency_ms": 3000}))
        .await;
    let gw = Gateway::start(&args(
        &urls(&workers),
        &[
            "--policy",
            "round-robin",
            "--first-byte-timeout-secs",
            "0.3",
        ],
    ))
    .await;
    gw.wait_ready(Duration::from_secs(5)).await;
    let client = client();
    let started = Instant::now();
    for _ in 0..9 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "retried on a fast worker");
    }
    let retries = metric(&gw.state, "caprl_gateway_retries_total", &[]);
    eprintln!(
        "slow worker: 9/9 ok in {:.2} s with {retries} retries",
        started.elapsed().as_secs_f64()
    );
    assert!(retries >= 1.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answering_400_is_not_ejected() {
    let workers = three(&[]);
    let bad = workers[1].url();
    workers[1]
        .control(serde_json::json!({"fail_rate": 1.0, "fail_status": 400}))
        .await;
    let gw = Gateway::start(&args(&urls(&workers), &["--policy", "round-robin"])).await;
    gw.wait_ready(Duration::from_secs(5)).await;
    let client = client();
    let mut passed_through = 0;
    for _ in 0..30 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
        if r.status() == 400 {
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(
                v["error"]["message"], "injected failure",
                "the worker's own 4xx body"
            );
            passed_through += 1;
        }
    }
    assert!(passed_through >= 5, "{passed_through}");
    assert_eq!(
        metric(
            &gw.state,
            "caprl_gateway_worker_ejections_total",
            &[("worker", &bad)]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &gw.state,
            "caprl_gateway_worker_health",
            &[("worker", &bad)]
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_sticks_to_one_worker_and_spreads_when_saturated() {
    let workers = three(&["--latency-ms", "2"]);
    let gw = Gateway::start(&args(
        &urls(&workers),
        &["--policy", "affinity", "--max-in-flight", "2"],
    ))
    .await;
    gw.wait_ready(Duration::from_secs(5)).await;
    let image = png(64, 48, 7);
    let client = client();
    for _ in 0..100 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&image_request(&image, 2))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
    }
    let mut counts = Vec::new();
    for w in &workers {
        counts.push(w.requests().await);
    }
    eprintln!("affinity, sequential: {counts:?}");
    assert!(counts.contains(&100), "one worker got all 100: {counts:?}");

    // Saturate the owner (2 in flight max, 300 ms each): the rest spread.
    for w in &workers {
        w.control(serde_json::json!({"latency_ms": 300})).await;
    }
    let before = counts.clone();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, body) = (
            client.clone(),
            gw.url("/v1/chat/completions"),
            image_request(&image, 2),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("answer"), 200);
    }
    let mut spread = Vec::new();
    for (w, b) in workers.iter().zip(&before) {
        spread.push(w.requests().await - b);
    }
    eprintln!("affinity, saturated: {spread:?}");
    assert!(
        spread.iter().filter(|c| **c > 0).count() >= 2,
        "spread when saturated: {spread:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_with_retry_after_and_no_timeouts() {
    let worker = FakeProc::start(0, &["--latency-ms", "300"]);
    let gw = Gateway::start(&args(
        &[worker.url()],
        &[
            "--max-in-flight",
            "2",
            "--queue-capacity",
            "5",
            "--queue-timeout-secs",
            "1",
        ],
    ))
    .await;
    gw.wait_ready(Duration::from_secs(5)).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (client, url) = (client(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&text_request(2))
                .send()
                .await
                .expect("answered, not timed out");
            let retry = r.headers().get("retry-after").is_some()
                && r.headers().get("retry-after-ms").is_some();
            (r.status().as_u16(), retry)
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.expect("task") {
            (200, _) => ok += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let took = started.elapsed().as_secs_f64();
    let max_depth = metric(&gw.state, "caprl_gateway_queue_depth", &[]);
    eprintln!("overload: {ok} ok, {limited} answered 429 with retry-after, all within {took:.2} s");
    assert!(limited > 0 && ok > 0);
    assert!(took < 5.0, "no request hung: {took}");
    assert!(max_depth <= 5.0);
    let worker_max: u64 = worker.stats().await["max_in_flight"]
        .as_u64()
        .expect("count");
    assert!(
        worker_max <= 2,
        "the worker never saw more than its cap: {worker_max}"
    );
    gw.shutdown().await;
}

/// A resolver the test controls: the name resolves to whatever addresses the test sets.
struct TestResolver(std::sync::Mutex<Vec<std::net::SocketAddr>>);

impl caprl_gateway::pool::discovery::Resolver for TestResolver {
    fn resolve(
        &self,
        _host: &str,
        _port: u16,
    ) -> futures::future::BoxFuture<'_, std::io::Result<Vec<std::net::SocketAddr>>> {
        let addrs = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_adds_and_drains_workers() {
    let workers = three(&[]);
    let addr = |w: &FakeProc| std::net::SocketAddr::from(([127, 0, 0, 1], w.port));
    let resolver = Arc::new(TestResolver(std::sync::Mutex::new(vec![addr(&workers[0])])));
    let gw = Gateway::start_with_resolver(
        &args(
            &["caprl=dns+http://vllm.caprl.svc.cluster.local:8000".to_string()],
            &[
                "--dns-refresh-secs",
                "0.2",
                "--health-interval-secs",
                "0.2",
                "--policy",
                "round-robin",
            ],
        ),
        Some(resolver.clone()),
    )
    .await;
    gw.wait_ready(Duration::from_secs(5)).await;
    *resolver.0.lock().expect("lock") =
        vec![addr(&workers[0]), addr(&workers[1]), addr(&workers[2])];
    assert!(
        wait_for(Duration::from_secs(5), || async {
            gw.reachable("caprl").await == 3
        })
        .await
        .is_some(),
        "new addresses join"
    );
    let client = client();
    for _ in 0..9 {
        client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
    }
    for w in &workers {
        assert!(w.requests().await >= 1, "every discovered worker serves");
    }
    // Worker 0 vanishes from DNS: it gets nothing new.
    *resolver.0.lock().expect("lock") = vec![addr(&workers[1]), addr(&workers[2])];
    assert!(
        wait_for(Duration::from_secs(5), || async {
            gw.state.pools["caprl"].members.list().len() == 2
        })
        .await
        .is_some(),
        "vanished address leaves"
    );
    let before = workers[0].requests().await;
    for _ in 0..9 {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&text_request(2))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        workers[0].requests().await,
        before,
        "a removed worker gets nothing new"
    );
    gw.shutdown().await;
}
