//! SIGTERM during load, against the real binary: in-flight requests complete, new ones are
//! refused cleanly (503 with an OpenAI error while draining, or a closed port after), and the
//! process exits 0.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let worker = FakeProc::start(0, &["--latency-ms", "1500"]);
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_caprl-gateway"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--worker",
            &worker.url(),
            "--shutdown-grace-secs",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    // `--port 0`: the gateway prints the port it bound.
    let base = format!("http://{}", listening_addr(&mut gateway, START_TIMEOUT));
    let ready = wait_for(Duration::from_secs(10), || async {
        matches!(reqwest::get(format!("{base}/ready")).await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready.is_some(), "gateway ready");

    let mut in_flight = Vec::new();
    for _ in 0..6 {
        let (client, url) = (client(), format!("{base}/v1/chat/completions"));
        in_flight.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&text_request(2))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Wait until the worker has them all, then ask the gateway to stop.
    let all_there = wait_for(Duration::from_secs(5), || async {
        worker.stats().await["in_flight"].as_u64() == Some(6)
    })
    .await;
    assert!(all_there.is_some(), "six requests in flight");
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    // While draining: not ready, and a new request is refused cleanly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(format!("{base}/ready"))
        .await
        .expect("still listening while draining");
    assert_eq!(ready.status(), 503);
    let refused = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&text_request(2))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "shutting_down");

    for t in in_flight {
        assert_eq!(
            t.await.expect("task").expect("completed"),
            200,
            "in-flight requests finish"
        );
    }
    let exit = wait_for(Duration::from_secs(10), || {
        let done = gateway.try_wait().expect("wait").is_some();
        async move { done }
    })
    .await;
    assert!(exit.is_some(), "the gateway exits after draining");
    let code = gateway.wait().expect("status");
    eprintln!(
        "SIGTERM: 6/6 in-flight completed, exit {:?} {:.2} s after the signal",
        code.code(),
        signalled.elapsed().as_secs_f64()
    );
    assert!(code.success(), "exit 0: {code:?}");
}
