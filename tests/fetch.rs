//! Remote image fetch (`--fetch-remote-images`) end to end: the gateway on 127.0.0.1 in front of
//! an in-process fake worker (which records the body it got), an image server on 127.0.0.1 that
//! counts every TCP connection it accepts and every path it is asked for, and a resolver with
//! fixed answers, so names resolve to whatever a test says and nothing leaves the machine.
//!
//! The positive tests need `--fetch-allow-loopback` (the image server is on 127.0.0.1). The
//! refusals run without it and prove that nothing was connected to: the image server's accept
//! counter stays 0 while every refused URL carries its port, so a guard that let one through
//! would have connected to it (127.0.0.1, 0.0.0.0 and ::ffff:127.0.0.1 all reach it on Linux),
//! and the other refused addresses answer `image_url_refused`, which only the guard produces,
//! before any connection, never a connection error.

mod common;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use caprl_gateway::pool::discovery::Resolver;
use common::{data_url, metric, png, wait_for, Gateway};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// Where the image sits in [`request`]'s body.
const PARAM: &str = "messages[1].content[0].image_url.url";

/// Names and what they resolve to; every name asked for is noted.
#[derive(Default)]
struct FixedResolver {
    answers: HashMap<String, Vec<IpAddr>>,
    asked: Mutex<Vec<String>>,
}

impl FixedResolver {
    fn new(answers: &[(&str, &[&str])]) -> Arc<FixedResolver> {
        Arc::new(FixedResolver {
            answers: answers
                .iter()
                .map(|(name, ips)| {
                    let ips = ips.iter().map(|ip| ip.parse().expect("an IP")).collect();
                    (name.to_string(), ips)
                })
                .collect(),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl Resolver for FixedResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        self.asked.lock().expect("lock").push(host.to_string());
        let answer = self.answers.get(host).map(|ips| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        })
    }
}

/// The image server's state: what it serves and what it saw.
#[derive(Clone)]
struct Images {
    png: Arc<Vec<u8>>,
    accepts: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

struct ImageServer {
    addr: SocketAddr,
    state: Images,
}

impl ImageServer {
    async fn start() -> ImageServer {
        let state = Images {
            png: Arc::new(png(96, 64, 11)),
            accepts: Arc::new(AtomicUsize::new(0)),
            paths: Arc::new(Mutex::new(Vec::new())),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .route("/kite.png", get(image))
            .route("/redirect", get(redirect))
            .route("/hops/{n}", get(hops))
            .route("/loop", get(|| async { found("/loop") }))
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route("/text", get(|| async { "hello, not an image" }))
            .route("/slow", get(slow))
            .route("/paced", get(paced))
            .route("/chunked", get(chunked))
            .layer(axum::middleware::from_fn_with_state(state.clone(), note))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = state.accepts.clone();
        let listener = listener.tap_io(move |_| {
            accepts.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ImageServer { addr, state }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn accepts(&self) -> usize {
        self.state.accepts.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.state.paths.lock().expect("lock").clone()
    }

    fn png(&self) -> &[u8] {
        &self.state.png
    }
}

async fn note(
    State(s): State<Images>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or(String::new(), |p| p.to_string());
    s.paths.lock().expect("lock").push(path);
    next.run(req).await
}

fn found(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

async fn image(State(s): State<Images>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], s.png.to_vec()).into_response()
}

/// `/redirect?to=URL`: 302 to URL.
async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    found(q.get("to").map_or("/kite.png", String::as_str))
}

/// `/hops/N`: N redirects, then the image.
async fn hops(Path(n): Path<u32>) -> Response {
    match n {
        0 => found("/kite.png"),
        n => found(&format!("/hops/{}", n - 1)),
    }
}

async fn slow(State(s): State<Images>) -> Response {
    tokio::time::sleep(Duration::from_secs(5)).await;
    image(State(s)).await
}

/// The image after 200 ms, noting how many were in flight at once.
async fn paced(State(s): State<Images>) -> Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    image(State(s)).await
}

/// The image with no declared length.
async fn chunked(State(s): State<Images>) -> Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        s.png.chunks(512).map(|c| Ok(c.to_vec())).collect();
    axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
}

struct Setup {
    gw: Gateway,
    worker: FakeWorker,
    images: ImageServer,
    resolver: Arc<FixedResolver>,
    _worker_task: tokio::task::JoinHandle<()>,
}

/// The image server, a fake worker, and a gateway with `--fetch-remote-images` (unless `off`),
/// `extra` flags, and a resolver with `answers` (`{port}` is not needed: URLs carry the port).
async fn setup_with(fetch: bool, extra: &[&str], answers: &[(&str, &[&str])]) -> Setup {
    let images = ImageServer::start().await;
    let worker = FakeWorker::new("w0", vec!["caprl".into()], Behaviour::default());
    let (worker_addr, task) = worker.clone().spawn(0).await.expect("worker binds");
    let mut args = vec!["--worker".to_string(), format!("http://{worker_addr}")];
    if fetch {
        args.push("--fetch-remote-images".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let resolver = FixedResolver::new(answers);
    let gw = Gateway::start_with_resolver(&args, Some(resolver.clone())).await;
    gw.wait_ready(WAIT).await;
    Setup {
        gw,
        worker,
        images,
        resolver,
        _worker_task: task,
    }
}

async fn setup(extra: &[&str], answers: &[(&str, &[&str])]) -> Setup {
    setup_with(true, extra, answers).await
}

/// A chat request with the image `url` at [`PARAM`].
fn request(url: &str) -> Value {
    json!({
        "model": "caprl",
        "max_tokens": 8,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Please describe the image in detail."}
            ]}
        ]
    })
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(s: &Setup, body: &Value) -> Reply {
    let resp = common::client()
        .post(s.gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    }
}

/// The envelope is OpenAI's, with this status, code and param, and a message that says `why`.
fn assert_error(r: &Reply, status: u16, code: &str, param: &str, why: &str) -> String {
    let e = &r.body["error"];
    assert_eq!(r.status, status, "{why}: {}", r.body);
    let keys: BTreeSet<&str> = e
        .as_object()
        .unwrap_or_else(|| panic!("an error envelope: {}", r.body))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["message", "type", "param", "code"]));
    assert_eq!(e["type"], "invalid_request_error", "{}", r.body);
    assert_eq!(e["code"], code, "{}", r.body);
    assert_eq!(e["param"], param, "{}", r.body);
    let message = e["message"].as_str().expect("a message").to_string();
    assert!(message.contains(why), "{message:?} does not say {why:?}");
    message
}

/// The image URL the worker got in the last request (data URLs elided by the fake worker to
/// their head and length).
fn forwarded_url(worker: &FakeWorker) -> String {
    worker.stats()["last_request"]["body"]["messages"][1]["content"][0]["image_url"]["url"]
        .as_str()
        .expect("the worker got an image URL")
        .to_string()
}

fn worker_requests(worker: &FakeWorker) -> u64 {
    worker.stats()["requests"].as_u64().expect("a count")
}

/// How the fake worker shows a data URL: its first 32 characters and its length.
fn elided(url: &str) -> String {
    let head: String = url.chars().take(32).collect();
    format!("{head}…({} chars)", url.len())
}

fn png_data_url(bytes: &[u8]) -> String {
    common::data_url_as(bytes, "image/png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_image_reaches_the_worker_as_a_checked_data_url() {
    let s = setup(&["--fetch-allow-loopback"], &[]).await;
    let inline = post(&s, &request(&data_url(s.images.png()))).await;
    assert_eq!(inline.status, 200, "{}", inline.body);

    let r = post(&s, &request(&s.images.url("/kite.png"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        forwarded_url(&s.worker),
        elided(&png_data_url(s.images.png())),
        "the worker got the image's bytes as a data URL, not the http URL"
    );
    // Measured as the same bytes sent inline are.
    assert_eq!(r.headers["x-caprl-images"], "1");
    assert_eq!(
        r.headers["x-caprl-image-tokens"],
        inline.headers["x-caprl-image-tokens"]
    );
    assert_eq!(s.images.paths(), vec!["/kite.png"]);
    let state = &s.gw.state;
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_fetches_total",
            &[("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric(state, "caprl_gateway_image_fetch_bytes_total", &[]),
        s.images.png().len() as f64
    );
    assert_eq!(
        metric(
            state,
            "caprl_gateway_images_total",
            &[("format", "png"), ("outcome", "ok")]
        ),
        2.0,
        "the inline image and the fetched one, each checked once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_named_twice_in_a_request_is_fetched_once_and_inlined_twice() {
    let s = setup(&["--fetch-allow-loopback"], &[]).await;
    let url = s.images.url("/kite.png");
    let mut body = request(&url);
    // The same image again, as a QA prompt with two questions about one image might send it.
    body["messages"][1]["content"]
        .as_array_mut()
        .expect("parts")
        .push(json!({"type": "image_url", "image_url": {"url": url}}));
    let r = post(&s, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.images.paths(), vec!["/kite.png"], "one download");
    assert_eq!(r.headers["x-caprl-images"], "2");
    let want = png_data_url(s.images.png());
    assert_eq!(s.worker.last_data_urls(), vec![want.clone(), want]);
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_image_fetches_total",
            &[("outcome", "ok")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_goes_through_the_resolver_and_one_redirect_is_followed() {
    let s = setup(
        &["--fetch-allow-loopback"],
        &[("images.test", &["127.0.0.1"])],
    )
    .await;
    let url = format!(
        "http://images.test:{}/redirect?to=/kite.png",
        s.images.port()
    );
    let r = post(&s, &request(&url)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        forwarded_url(&s.worker),
        elided(&png_data_url(s.images.png()))
    );
    assert_eq!(
        s.images.paths(),
        vec!["/redirect?to=/kite.png", "/kite.png"]
    );
    assert!(s.resolver.asked().iter().all(|h| h == "images.test"));
    assert!(
        !s.resolver.asked().is_empty(),
        "the name was resolved by the test's resolver"
    );

    // Three hops are allowed.
    let r = post(&s, &request(&s.images.url("/hops/2"))).await;
    assert_eq!(r.status, 200, "three redirects: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_image_hits_the_cache_entry_of_the_same_bytes_sent_inline() {
    let s = setup(
        &["--fetch-allow-loopback", "--cache-max-bytes", "1MiB"],
        &[],
    )
    .await;
    let inline = post(&s, &request(&data_url(s.images.png()))).await;
    assert_eq!(inline.status, 200, "{}", inline.body);
    assert_eq!(inline.headers["x-cache"], "miss");
    let fetched = post(&s, &request(&s.images.url("/kite.png"))).await;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(
        fetched.headers["x-cache"], "hit",
        "keyed by content, not by URL"
    );
    assert_eq!(fetched.body, inline.body);
    assert_eq!(worker_requests(&s.worker), 1);
    assert_eq!(
        s.images.paths(),
        vec!["/kite.png"],
        "fetched, then answered from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fetching_off_urls_are_forwarded_as_they_are() {
    let s = setup_with(false, &[], &[]).await;
    let url = s.images.url("/kite.png");
    let r = post(&s, &request(&url)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(forwarded_url(&s.worker), url);
    assert_eq!(s.images.accepts(), 0, "the gateway fetched nothing");
    assert!(s.gw.state.fetcher.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_class_is_refused_before_connecting() {
    let names: &[(&str, &[&str])] = &[
        ("loop.test", &["127.0.0.1"]),
        ("private.test", &["10.1.2.3"]),
        ("cgnat.test", &["100.64.1.1"]),
        ("metadata.test", &["169.254.169.254"]),
        ("this-network.test", &["0.1.2.3"]),
        ("ula.test", &["fd00::1"]),
        ("mapped.test", &["::ffff:192.168.1.1"]),
        // One public and one private address: refused as a whole.
        ("mixed.test", &["93.184.216.34", "10.9.9.9"]),
    ];
    let s = setup(&[], names).await;
    let port = s.images.port();
    let literal = |host: &str| format!("http://{host}:{port}/kite.png");
    let mut cases: Vec<(String, &str)> = [
        ("127.0.0.1", "a loopback address (127.0.0.0/8)"),
        ("127.5.6.7", "a loopback address"),
        ("2130706433", "`127.0.0.1` is a loopback address"),
        ("0x7f.1", "`127.0.0.1` is a loopback address"),
        ("0.0.0.0", "\"this network\" address"),
        ("10.0.0.1", "a private address (RFC 1918)"),
        ("172.16.5.4", "a private address (RFC 1918)"),
        ("192.168.0.1", "a private address (RFC 1918)"),
        ("100.64.0.1", "CGNAT"),
        ("169.254.169.254", "link-local"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.251", "multicast"),
        ("240.1.2.3", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("[::1]", "the loopback address (::1)"),
        ("[::]", "the unspecified address"),
        ("[::ffff:127.0.0.1]", "loopback address (127.0.0.0/8), embedded in an IPv4-mapped"),
        ("[::ffff:169.254.169.254]", "link-local address (169.254.0.0/16, where cloud metadata"),
        ("[::127.0.0.1]", "IPv4-compatible"),
        ("[fd12::1]", "unique local"),
        ("[fe80::1]", "link-local address (fe80::/10)"),
        ("[ff02::1]", "multicast"),
        ("[64:ff9b::a00:1]", "private address (RFC 1918), embedded in a NAT64"),
        ("[2002:a9fe:a9fe::1]", "link-local address (169.254.0.0/16, where cloud metadata services answer), embedded in a 6to4"),
        ("[2001::1]", "Teredo"),
        ("[2001:db8::1]", "documentation"),
    ]
    .iter()
    .map(|(host, why)| (literal(host), *why))
    .collect();
    let by_name = [
        ("loop.test", "`loop.test` resolves to a loopback address"),
        (
            "private.test",
            "`private.test` resolves to a private address (RFC 1918)",
        ),
        ("cgnat.test", "resolves to a shared address (CGNAT"),
        (
            "metadata.test",
            "resolves to a link-local address (169.254.0.0/16",
        ),
        (
            "this-network.test",
            "resolves to a \"this network\" address",
        ),
        ("ula.test", "resolves to a unique local address"),
        (
            "mapped.test",
            "resolves to a private address (RFC 1918), embedded in an IPv4-mapped",
        ),
        ("mixed.test", "`mixed.test` resolves to a private address"),
    ];
    for (name, why) in by_name {
        cases.push((literal(name), why));
    }
    cases.push((
        format!("http://user:secret@images.test:{port}/kite.png"),
        "URLs with credentials",
    ));
    for (url, why) in &cases {
        let r = post(&s, &request(url)).await;
        let message = assert_error(&r, 400, "image_url_refused", PARAM, why);
        assert!(message.starts_with("image URL refused: "), "{message}");
        // A name's addresses are the gateway's own business: never told to the client.
        for (name, ips) in names {
            if url.contains(name) {
                for ip in *ips {
                    assert!(!message.contains(ip), "{message} tells {name}'s address");
                }
            }
        }
    }
    assert_eq!(s.images.accepts(), 0, "nothing was connected to");
    assert_eq!(
        worker_requests(&s.worker),
        0,
        "no refused request reached a worker"
    );
    let asked: BTreeSet<String> = s.resolver.asked().into_iter().collect();
    let names: BTreeSet<String> = names.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        asked, names,
        "only names are resolved; literals and credentials never are"
    );
    let state = &s.gw.state;
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_fetches_total",
            &[("outcome", "refused")]
        ),
        cases.len() as f64
    );
    assert_eq!(
        metric(
            state,
            "caprl_gateway_rejections_total",
            &[("reason", "bad_request")]
        ),
        cases.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lists_and_plain_http_are_refused_before_resolving() {
    let s = setup(
        &[
            "--fetch-allow-http=false",
            "--fetch-allowed-hosts",
            "*.allowed.test,cdn.test",
            "--fetch-denied-hosts",
            "bad.allowed.test",
        ],
        &[],
    )
    .await;
    let port = s.images.port();
    for (url, why) in [
        (
            format!("http://img.allowed.test:{port}/kite.png"),
            "plain http is not fetched",
        ),
        (
            format!("https://other.test:{port}/kite.png"),
            "the host `other.test` is not in the allowed hosts",
        ),
        (
            format!("https://allowed.test:{port}/kite.png"),
            "`allowed.test` is not in the allowed hosts",
        ),
        (
            format!("https://bad.allowed.test:{port}/kite.png"),
            "the host `bad.allowed.test` is denied",
        ),
    ] {
        let r = post(&s, &request(&url)).await;
        assert_error(&r, 400, "image_url_refused", PARAM, why);
    }
    assert!(s.resolver.asked().is_empty(), "refused before any lookup");
    assert_eq!(s.images.accepts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redirect_hop_is_checked_like_the_first_url() {
    let s = setup(
        &[
            "--fetch-allow-loopback",
            "--fetch-denied-hosts",
            "evil.test",
        ],
        &[
            ("images.test", &["127.0.0.1"]),
            ("evil.test", &["127.0.0.1"]),
            ("private.test", &["10.0.0.7"]),
        ],
    )
    .await;
    let port = s.images.port();
    let via = |to: &str| {
        let to: String = url::form_urlencoded::byte_serialize(to.as_bytes()).collect();
        s.images.url(&format!("/redirect?to={to}"))
    };
    let cases = [
        (
            via("http://169.254.169.254/latest/meta-data/"),
            "a redirect leads to a URL that is refused: `169.254.169.254` is a link-local",
        ),
        (
            via(&format!("http://[::ffff:10.0.0.1]:{port}/kite.png")),
            "a redirect leads to a URL that is refused: `::ffff:10.0.0.1` is a private address",
        ),
        (
            via(&format!("http://private.test:{port}/kite.png")),
            "`private.test` resolves to a private address",
        ),
        (
            via(&format!("http://evil.test:{port}/kite.png")),
            "a redirect leads to a URL that is refused: the host `evil.test` is denied",
        ),
        (
            via(&format!("http://user:pw@images.test:{port}/kite.png")),
            "a redirect leads to a URL that is refused: URLs with credentials",
        ),
        (
            via("ftp://images.test/kite.png"),
            "a redirect leads to a URL that is refused: the scheme `ftp` is not fetched",
        ),
        (s.images.url("/loop"), "more than 3 redirects"),
        (s.images.url("/hops/3"), "more than 3 redirects"),
    ];
    for (url, why) in &cases {
        let r = post(&s, &request(url)).await;
        assert_error(&r, 400, "image_url_refused", PARAM, why);
    }
    assert!(
        !s.images.paths().iter().any(|p| p == "/kite.png"),
        "no refused hop was requested: {:?}",
        s.images.paths()
    );
    assert_eq!(
        s.resolver.asked(),
        vec!["private.test"],
        "a refused hop's name is not even looked up; an allowed one is, and refused there"
    );
    assert_eq!(worker_requests(&s.worker), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_the_remote_side_are_400_naming_the_field() {
    let s = setup(
        &["--fetch-allow-loopback", "--fetch-timeout-secs", "0.5"],
        &[("images.test", &["127.0.0.1"])],
    )
    .await;
    // A port nothing listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for (url, why) in [
        (
            s.images.url("/missing"),
            "image fetch failed: `127.0.0.1` answered 404 Not Found",
        ),
        (
            s.images.url("/slow"),
            "`127.0.0.1` did not send the whole image within 0.5 s",
        ),
        (
            format!("http://127.0.0.1:{closed}/kite.png"),
            "cannot connect to `127.0.0.1`",
        ),
        (
            format!("http://nowhere.test:{}/kite.png", s.images.port()),
            "cannot resolve `nowhere.test`",
        ),
    ] {
        let r = post(&s, &request(&url)).await;
        assert_error(&r, 400, "image_fetch_failed", PARAM, why);
    }
    // Fetched, then refused by the same checks as a data URL, naming the part as they do.
    let r = post(&s, &request(&s.images.url("/text"))).await;
    assert_error(
        &r,
        400,
        "invalid_request",
        "messages[1].content[0].image_url",
        "not a supported image",
    );
    assert_eq!(worker_requests(&s.worker), 0);
    let state = &s.gw.state;
    for (outcome, n) in [
        ("status", 1.0),
        ("timeout", 1.0),
        ("error", 2.0),
        ("ok", 1.0),
    ] {
        assert_eq!(
            metric(
                state,
                "caprl_gateway_image_fetches_total",
                &[("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_bytes_stop_at_the_image_and_body_limits() {
    let probe = png(96, 64, 11).len();
    let limit = (probe - 1).to_string();
    let s = setup(
        &["--fetch-allow-loopback", "--max-image-bytes", &limit],
        &[],
    )
    .await;
    let r = post(&s, &request(&s.images.url("/kite.png"))).await;
    assert_error(
        &r,
        413,
        "payload_too_large",
        PARAM,
        &format!("is {probe} bytes; the limit is {limit} bytes"),
    );
    let r = post(&s, &request(&s.images.url("/chunked"))).await;
    assert_error(
        &r,
        413,
        "payload_too_large",
        PARAM,
        &format!("is over the limit of {limit} bytes"),
    );
    let state = &s.gw.state;
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_fetches_total",
            &[("outcome", "too_large")]
        ),
        2.0
    );

    // The request with its images as data URLs must fit the body limit, as if sent inline.
    // Room for the body and one image as base64, not two.
    let body_limit = (probe * 4 / 3 + 1000).to_string();
    let s = setup(
        &[
            "--fetch-allow-loopback",
            "--max-body-bytes",
            &body_limit,
            "--max-inflight-body-bytes",
            "1MiB",
        ],
        &[],
    )
    .await;
    let mut two = request(&s.images.url("/kite.png"));
    two["messages"][1]["content"][1] =
        json!({"type": "image_url", "image_url": {"url": s.images.url("/kite.png")}});
    let r = post(&s, &two).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("with its fetched images would be over the body limit")),
        "{}",
        r.body
    );
    assert_eq!(worker_requests(&s.worker), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_are_bounded() {
    let s = setup(
        &["--fetch-allow-loopback", "--fetch-max-concurrent", "1"],
        &[],
    )
    .await;
    // Three different URLs (one URL named thrice would be fetched once).
    let url = s.images.url("/paced");
    let parts: Vec<Value> = (0..3)
        .map(|i| json!({"type": "image_url", "image_url": {"url": format!("{url}?copy={i}")}}))
        .collect();
    let mut body = request(&url);
    body["messages"][1]["content"] = Value::Array(parts);
    let r = post(&s, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-caprl-images"], "3");
    assert_eq!(s.images.paths().len(), 3);
    assert_eq!(
        s.images.state.max_in_flight.load(Ordering::SeqCst),
        1,
        "one fetch at a time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_line_whose_fetch_fails_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let s = setup(&["--fetch-allow-loopback", "--data-dir", &data], &[]).await;
    let line = |id: &str, url: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": request(url)})
        .to_string()
            + "\n"
    };
    let input = line("good", &s.images.url("/kite.png")) + &line("gone", &s.images.url("/missing"));
    let file_id = upload(&s, input.as_bytes()).await;
    let created: Value = common::client()
        .post(s.gw.url("/v1/batches"))
        .json(
            &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"}),
        )
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let id = created["id"].as_str().expect("a batch id").to_string();
    let batches = s.gw.state.batches.as_ref().expect("batches on");
    let row = || {
        batches
            .store()
            .0
            .batch(&id)
            .expect("store")
            .expect("the batch")
    };
    let done = wait_for(WAIT, || async { row().status.is_terminal() }).await;
    let b = row();
    assert!(done.is_some(), "the batch did not end: {b:?}");
    assert_eq!((b.total, b.completed, b.failed), (2, 1, 1), "{b:?}");
    let lines = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(batches.files.path(file))
            .expect("the file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let out = lines(&b.output_file_id);
    assert_eq!(out[0]["custom_id"], "good");
    let err = lines(&b.error_file_id);
    assert_eq!(err[0]["custom_id"], "gone");
    let e = &err[0]["response"]["body"]["error"];
    assert_eq!(err[0]["response"]["status_code"], 400, "{}", err[0]);
    assert_eq!(e["code"], "image_fetch_failed", "{}", err[0]);
    assert_eq!(e["param"], PARAM);
    assert_eq!(
        s.images
            .paths()
            .iter()
            .filter(|p| *p == "/kite.png")
            .count(),
        1
    );
    assert_eq!(worker_requests(&s.worker), 1);
}

/// Upload a batch input file; its id.
async fn upload(s: &Setup, bytes: &[u8]) -> String {
    let boundary = "caprl-fetch-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = common::client()
        .post(s.gw.url("/v1/files"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["id"].as_str().expect("an id").to_string()
}
