//! Slow and hostile clients against the real binary (`caprl-gateway serve` as a child process,
//! so its memory is its own): while 300 connections trickle half a head, 100 uploads stall
//! after their first 64 KiB and 1,000 keep-alive connections sit idle, a normal request is
//! answered; once they close, the open-connection gauge is back to zero and the resident
//! memory back near where it started.

mod common;

use common::{listening_addr, FakeProc, START_TIMEOUT};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_HEADS: usize = 300;
const STALLED_UPLOADS: usize = 100;
const IDLE: usize = 1000;
/// How far above its starting point the gateway's memory may settle once they are gone.
const RSS_SLACK_KIB: u64 = 12 << 10;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn gauge(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_request_is_served_among_1400_hostile_connections_and_memory_comes_back() {
    let worker = FakeProc::start(0, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_caprl-gateway"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--worker"])
        .arg(worker.url())
        // Long deadlines: this test is about holding the connections, not cutting them.
        .args([
            "--header-read-timeout-secs",
            "120",
            "--body-read-timeout-secs",
            "120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let addr = listening_addr(&mut child, START_TIMEOUT);
    let gw = Proc(child);
    let pid = gw.0.id();
    let base = format!("http://{addr}");
    // No idle connections kept: the gauge then counts only the scrape's own connection.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let chat = serde_json::json!({
        "model": "caprl", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Describe a kite."}]
    });
    let ready = common::wait_for(Duration::from_secs(10), || async {
        client
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready.is_some(), "the gateway never served");
    // Warm up, then take the baseline.
    for _ in 0..50 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
    }
    let baseline = rss_kib(pid);

    let mut held: Vec<TcpStream> = Vec::with_capacity(SLOW_HEADS + STALLED_UPLOADS + IDLE);
    for _ in 0..SLOW_HEADS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .expect("write");
        held.push(s);
    }
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..STALLED_UPLOADS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n",
        )
        .await
        .expect("write");
        s.write_all(&chunk).await.expect("write");
        held.push(s);
    }
    for _ in 0..IDLE {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(s);
    }
    let open = gauge(&client, &base, "caprl_gateway_connections_open").await;
    assert!(
        open >= (SLOW_HEADS + STALLED_UPLOADS + IDLE) as f64,
        "the gateway holds {open} connections"
    );
    // The normal request, on a fresh connection, among them.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    let r = fresh
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .expect("answered among the hostile connections");
    assert_eq!(r.status(), 200);
    let served_in = started.elapsed();
    let peak = rss_kib(pid);
    drop(fresh);

    drop(held);
    let drained = common::wait_for(Duration::from_secs(10), || async {
        // The scrape's own connection is the one left.
        gauge(&client, &base, "caprl_gateway_connections_open").await <= 1.0
    })
    .await;
    assert!(
        drained.is_some(),
        "connections were not released: {} open",
        gauge(&client, &base, "caprl_gateway_connections_open").await
    );
    let mut settled = rss_kib(pid);
    let back = common::wait_for(Duration::from_secs(30), || {
        settled = rss_kib(pid);
        async move { settled <= baseline + RSS_SLACK_KIB }
    })
    .await;
    eprintln!(
        "hostile clients: normal request in {:.1} ms; RSS baseline {} MiB, with {} connections \
         {} MiB, after {} MiB",
        served_in.as_secs_f64() * 1e3,
        baseline >> 10,
        SLOW_HEADS + STALLED_UPLOADS + IDLE,
        peak >> 10,
        settled >> 10
    );
    assert!(
        back.is_some(),
        "memory did not come back: baseline {baseline} KiB, peak {peak} KiB, now {settled} KiB"
    );
}
