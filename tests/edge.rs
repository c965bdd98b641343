//! The gateway's edge, over raw TCP: what it refuses from the request head alone (a declared
//! length over the limit, a bad `Host`, a head too large), the request bodies it refuses before
//! a worker sees them, and the clients it cuts off: a head or a body that does not arrive in
//! time, an idle keep-alive connection, connections past the bound. The app runs in-process on 127.0.0.1:0 through `serve::run`, in front of an
//! in-process fake worker whose request counter proves that nothing refused reached it.

use caprl_gateway::config;
use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use caprl_gateway::state::AppState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single read from the gateway may take. Below `edge::LINGER` (5 s), so a 413
/// that arrived only when the gateway gave up on the body would fail the test.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes of one response read.
const MAX_RESPONSE: usize = 1 << 20;

struct Setup {
    gateway: SocketAddr,
    worker: FakeWorker,
    state: AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Setup {
    async fn start(extra: &[&str]) -> Setup {
        let worker = FakeWorker::new("w0", vec!["caprl".into()], Behaviour::default());
        let (worker_addr, _task) = worker.clone().spawn(0).await.expect("worker binds");
        let mut argv = vec![
            "caprl-gateway".to_string(),
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--worker".into(),
            format!("http://{worker_addr}"),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = config::try_parse_from(argv)
            .expect("settings")
            .command
            .into_serve()
            .expect("serve");
        let state = AppState::build(*args).expect("state builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gateway = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run_state = state.clone();
        tokio::spawn(async move {
            let _ = caprl_gateway::serve::run(run_state, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let setup = Setup {
            gateway,
            worker,
            state,
            _stop: stop,
        };
        setup.wait_ready().await;
        setup
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let r = exchange(self.gateway, b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n").await;
            if r.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the gateway was not ready within 10 s");
    }

    fn worker_requests(&self) -> u64 {
        self.worker.stats()["requests"]
            .as_u64()
            .expect("a request count")
    }

    /// A good request still goes through, and reaches the worker exactly once.
    async fn good_request_succeeds(&self) {
        let before = self.worker_requests();
        let body =
            br#"{"model":"caprl","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
        let r = exchange(self.gateway, &request("t", body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(self.worker_requests(), before + 1);
    }
}

/// One HTTP/1.1 response, as read off the socket.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        format!("{}\n{}", self.head, String::from_utf8_lossy(&self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The OpenAI error envelope: `(code, param)`.
    fn error(&self) -> (String, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()));
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(err["type"], "invalid_request_error", "{v}");
        (
            err["code"].as_str().unwrap_or_default().to_string(),
            err["param"].clone(),
        )
    }
}

/// A POST of `body` to the chat endpoint with the given `Host` line.
fn request(host: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(READ_TIMEOUT, s.read(&mut chunk))
        .await
        .expect("the gateway answers within the read timeout")
        .expect("read");
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Read one response (head, then a Content-Length body) off `s`.
async fn read_response(s: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        assert!(buf.len() < MAX_RESPONSE, "response head too long");
        assert!(
            read_some(s, &mut buf).await > 0,
            "closed before a response head: {buf:?}"
        );
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {head}"));
    let mut raw = Raw {
        status,
        head,
        body: buf[head_end + 4..].to_vec(),
    };
    let len: usize = raw
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(len <= MAX_RESPONSE, "response body too long");
    while raw.body.len() < len {
        let mut more = Vec::new();
        assert!(read_some(s, &mut more).await > 0, "closed mid-body");
        raw.body.extend_from_slice(&more);
    }
    raw
}

/// Connect, write all of `bytes`, read one response.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_response(&mut s).await
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_any_body_byte() {
    let t = Setup::start(&[]).await;
    // One byte over the default 64 MiB, and no body at all: the answer cannot wait for it.
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 67108865\r\n\r\n";
    let started = Instant::now();
    let mut s = TcpStream::connect(t.gateway).await.expect("connect");
    s.write_all(head).await.expect("write");
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(started.elapsed() < READ_TIMEOUT);
    assert_eq!(
        r.error(),
        ("payload_too_large".into(), serde_json::Value::Null)
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.header("x-request-id").is_some(), "still inside observe");
    assert_eq!(t.worker_requests(), 0);
    t.good_request_succeeds().await;
}

#[tokio::test]
async fn expect_continue_with_a_huge_length_gets_413_not_100() {
    let t = Setup::start(&[]).await;
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000000000\r\n\r\n";
    let mut s = TcpStream::connect(t.gateway).await.expect("connect");
    s.write_all(head).await.expect("write");
    let r = read_response(&mut s).await;
    assert!(
        r.head.starts_with("HTTP/1.1 413"),
        "the first status line: {}",
        r.head
    );
    assert_eq!(r.error().0, "payload_too_large");
    // Nothing more follows: the connection closes without inviting the body.
    let mut rest = Vec::new();
    assert_eq!(read_some(&mut s, &mut rest).await, 0, "{rest:?}");
    assert_eq!(t.worker_requests(), 0);
    t.good_request_succeeds().await;
}

#[tokio::test]
async fn a_client_that_writes_its_whole_body_first_still_reads_the_413() {
    // As Python's httpx does: the whole request is written before anything is read. Without
    // the gateway reading the rest, its close would reset the connection under the 413.
    let t = Setup::start(&["--max-body-bytes", "4MiB"]).await;
    // Twice the limit (what the gateway still reads), more than loopback's socket buffers hold.
    let text = "x".repeat((8 << 20) - 100);
    let body = format!(r#"{{"model":"caprl","messages":[{{"role":"user","content":"{text}"}}]}}"#);
    let started = Instant::now();
    let r = exchange(t.gateway, &request("t", body.as_bytes())).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        r.error(),
        ("payload_too_large".into(), serde_json::Value::Null)
    );
    assert!(started.elapsed() < READ_TIMEOUT);
    assert_eq!(t.worker_requests(), 0);
    t.good_request_succeeds().await;
}

#[tokio::test]
async fn host_must_be_present_once_and_well_formed_on_http11() {
    let t = Setup::start(&[]).await;
    let body = br#"{"model":"caprl","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let len = body.len();
    let heads = [
        ("missing", format!("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {len}\r\n\r\n")),
        ("twice", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: {len}\r\n\r\n")),
        ("malformed", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a b\r\nContent-Length: {len}\r\n\r\n")),
        ("bad port", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a:80x\r\nContent-Length: {len}\r\n\r\n")),
    ];
    for (case, head) in heads {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let r = exchange(t.gateway, &bytes).await;
        assert_eq!(r.status, 400, "{case}: {}", r.text());
        assert_eq!(
            r.error(),
            ("invalid_request".into(), serde_json::Value::Null),
            "{case}"
        );
        assert!(r.header("x-request-id").is_some(), "{case}");
    }
    assert_eq!(t.worker_requests(), 0);
    // HTTP/1.0 may omit Host; an empty Host is valid (RFC 9110 §7.2).
    let r = exchange(t.gateway, b"GET /health HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = exchange(t.gateway, b"GET /health HTTP/1.1\r\nHost:\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = exchange(
        t.gateway,
        b"GET /health HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.good_request_succeeds().await;
}

#[tokio::test]
async fn http2_uses_authority_and_is_exempt() {
    let t = Setup::start(&[]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(READ_TIMEOUT)
        .build()
        .expect("client");
    let r = client
        .get(format!("http://{}/health", t.gateway))
        .send()
        .await
        .expect("an HTTP/2 answer");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bodies_a_worker_cannot_read_are_refused_with_the_field() {
    let t = Setup::start(&[]).await;
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let png = {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(out)
    };
    let image = |url: &str| {
        format!(
            r#"{{"model":"caprl","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{url}}}]}}]}}"#
        )
    };
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, serde_json::Value)> = vec![
        (
            "n",
            format!(r#"{{"model":"caprl","n":1000000,{msgs}}}"#).into(),
            "n".into(),
        ),
        (
            "max_tokens 0",
            format!(r#"{{"model":"caprl","max_tokens":0,{msgs}}}"#).into(),
            "max_tokens".into(),
        ),
        (
            "max_completion_tokens 2^63-1",
            format!(r#"{{"model":"caprl","max_completion_tokens":9223372036854775807,{msgs}}}"#)
                .into(),
            "max_completion_tokens".into(),
        ),
        (
            "string image_url",
            image(&format!(r#""data:image/png;base64,{png}""#)).into(),
            "messages[0].content[0].image_url".into(),
        ),
        (
            "object url",
            image(r#"{"url":{"u":"https://example.com/a.png"}}"#).into(),
            "messages[0].content[0].image_url.url".into(),
        ),
        (
            "BASE64",
            image(&format!(r#"{{"url":"data:image/png;BASE64,{png}"}}"#)).into(),
            "messages[0].content[0].image_url".into(),
        ),
        (
            "no host",
            image(r#"{"url":"https:///a.png"}"#).into(),
            "messages[0].content[0].image_url".into(),
        ),
        (
            "array body",
            br#"["caprl"]"#.to_vec(),
            serde_json::Value::Null,
        ),
        (
            "array message",
            br#"{"model":"caprl","messages":[["user","hi"]]}"#.to_vec(),
            "messages[0]".into(),
        ),
        (
            "array stream_options",
            format!(r#"{{"model":"caprl","stream":true,"stream_options":[],{msgs}}}"#).into(),
            "stream_options".into(),
        ),
        (
            "deep",
            format!(r#"{{"model":"caprl","x":{deep},{msgs}}}"#).into(),
            "x".into(),
        ),
        (
            "big integer",
            format!(
                r#"{{"model":"caprl","seed":{},{msgs}}}"#,
                "7".repeat(100_000)
            )
            .into(),
            "seed".into(),
        ),
        (
            "invalid UTF-8",
            [
                &br#"{"model":"caprl","user":""#[..],
                b"\xff\xfe",
                br#"","#,
                msgs.as_bytes(),
                b"}",
            ]
            .concat(),
            "user".into(),
        ),
    ];
    for (case, body, param) in cases {
        let r = exchange(t.gateway, &request("t", &body)).await;
        assert_eq!(r.status, 400, "{case}: {}", r.text());
        assert_eq!(r.error(), ("invalid_request".into(), param), "{case}");
        assert_eq!(t.worker_requests(), 0, "{case} reached the worker");
    }
    t.good_request_succeeds().await;
}

/// Whether the gateway closed `s` (EOF or reset) within `limit`, reading and dropping anything
/// it sent first.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn open_connections(t: &Setup) -> i64 {
    t.state
        .metrics
        .connections_open
        .with_label_values(&[] as &[&str])
        .get()
}

#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_and_an_idle_keep_alive_are_closed() {
    let t = Setup::start(&["--header-read-timeout-secs", "0.3"]).await;
    // Half a head, then nothing: cut off, while a normal request is served meanwhile.
    let mut slow = TcpStream::connect(t.gateway).await.expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .expect("write");
    t.good_request_succeeds().await;
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
    // A byte at a time, each in time for a per-read timeout but not for the head's deadline.
    let mut trickle = TcpStream::connect(t.gateway).await.expect("connect");
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if trickle.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(5) {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cut || closed_within(&mut trickle, Duration::from_secs(5)).await);
    // A keep-alive connection that answered one request and then sits idle is closed.
    let mut idle = TcpStream::connect(t.gateway).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut idle).await.status, 200);
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    assert_eq!(
        t.worker_requests(),
        1,
        "only the good request reached the worker"
    );
}

#[tokio::test]
async fn a_body_that_stalls_or_trickles_gets_408_and_the_connection_closes() {
    let t = Setup::start(&[
        "--body-read-timeout-secs",
        "0.3",
        "--min-body-bytes-per-sec",
        "1KiB",
    ])
    .await;
    let body = br#"{"model":"caprl","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    // Stalled: the head promises the body, a third of it arrives, then nothing.
    let full = request("t", body);
    let cut = full.len() - body.len() * 2 / 3;
    let mut stalled = TcpStream::connect(t.gateway).await.expect("connect");
    stalled.write_all(&full[..cut]).await.expect("write");
    let r = read_response(&mut stalled).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["error"]["code"], "request_timeout");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);

    // Trickled: a byte every 50 ms is far below 1 KiB/s; the deadline (0.3 s plus 1 ms a
    // byte) passes long before the body is complete.
    let trickle = TcpStream::connect(t.gateway).await.expect("connect");
    let (mut rx, mut tx) = trickle.into_split();
    let head_len = full.len() - body.len();
    tx.write_all(&full[..head_len]).await.expect("write");
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Bounded by the read timeout: the 408 comes long before.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(READ_TIMEOUT, rx.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                other => panic!("no answer to the trickle: {other:?}"),
            }
        }
        String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string()
    });
    for b in &full[head_len..] {
        if tx.write_all(&[*b]).await.is_err() || reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = reader.await.expect("reader");
    assert_eq!(status, "408");
    assert_eq!(t.worker_requests(), 0, "no partial body reached the worker");
    t.good_request_succeeds().await;
    let v = t
        .state
        .metrics
        .rejections
        .with_label_values(&["", "request_timeout"])
        .get();
    assert_eq!(v, 2);
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431() {
    let t = Setup::start(&["--max-header-bytes", "16KiB"]).await;
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let mut s = TcpStream::connect(t.gateway).await.expect("connect");
    // The gateway may answer and close before it has read everything: a write error is fine.
    let _ = s.write_all(big.as_bytes()).await;
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 431, "{}", r.text());
    let ok = exchange(
        t.gateway,
        format!(
            "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(8 << 10)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "a head under the bound is served");
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let t = Setup::start(&["--max-connections", "2"]).await;
    let wait_open = |n: i64| {
        let t = &t;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while open_connections(t) != n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            open_connections(t)
        }
    };
    assert_eq!(wait_open(0).await, 0);
    let a = TcpStream::connect(t.gateway).await.expect("connect");
    let mut b = TcpStream::connect(t.gateway).await.expect("connect");
    assert_eq!(wait_open(2).await, 2);
    // The third is accepted by the kernel, not by the gateway: its request is not answered
    // while both slots are taken...
    let mut c = TcpStream::connect(t.gateway).await.expect("connect");
    c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
    assert!(early.is_err(), "answered past the connection bound");
    assert_eq!(open_connections(&t), 2);
    // ... and is as soon as one of them closes.
    drop(a);
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200);
    b.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut b).await.status, 200);
    drop((b, c));
    assert_eq!(wait_open(0).await, 0, "every connection's slot came back");
}

#[tokio::test]
async fn bodies_past_the_in_flight_budget_wait_then_get_503_and_the_budget_comes_back() {
    let t = Setup::start(&[
        "--max-body-bytes",
        "600KiB",
        "--max-inflight-body-bytes",
        "1MiB",
        "--body-budget-wait-secs",
        "0.2",
    ])
    .await;
    t.worker.set(|b| b.latency_ms = 800);
    let body = |kib: usize| {
        serde_json::json!({"model": "caprl", "max_tokens": 2, "messages": [
            {"role": "user", "content": "x".repeat(kib << 10)}]})
    };
    let url = format!("http://{}/v1/chat/completions", t.gateway);
    let gauge = |t: &Setup| {
        t.state
            .metrics
            .body_bytes_in_flight
            .with_label_values(&[] as &[&str])
            .get()
    };
    // A holds ~500 KiB of the 1 MiB while its worker takes 800 ms.
    let first = {
        let (url, body) = (url.clone(), body(500));
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("answer")
                .status()
                .as_u16()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&t) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gauge(&t) >= 500 << 10,
        "the first body's hold: {}",
        gauge(&t)
    );
    // B's ~590 KiB does not fit beside it within the wait.
    let second = reqwest::Client::new()
        .post(&url)
        .json(&body(590))
        .send()
        .await
        .expect("answer");
    assert_eq!(second.status().as_u16(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let v: serde_json::Value = second.json().await.expect("envelope");
    assert_eq!(v["error"]["code"], "body_budget_full");
    assert_eq!(first.await.expect("task"), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&t) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gauge(&t), 0, "every hold was given back");
    t.worker.set(|b| b.latency_ms = 0);
    let again = reqwest::Client::new()
        .post(&url)
        .json(&body(590))
        .send()
        .await
        .expect("answer");
    assert_eq!(again.status().as_u16(), 200, "room came back");
    assert_eq!(
        t.state
            .metrics
            .rejections
            .with_label_values(&["", "body_budget_full"])
            .get(),
        1
    );
}
