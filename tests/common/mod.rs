//! Shared test support: fake workers as real processes on 127.0.0.1 (so a test can kill one),
//! the gateway in-process on an ephemeral port, and real image bytes.
#![allow(dead_code)]

use caprl_gateway::config::{self, ServeArgs};
use caprl_gateway::pool::discovery::Resolver;
use caprl_gateway::state::AppState;
use std::io::{BufRead, BufReader, Cursor};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a child process may take to print its `listening on ADDR` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The address a child (`caprl-gateway serve` or `caprl-fake-worker`, both started with piped
/// stdout) reports in its `listening on ADDR` line, so `--port 0` needs no guessed port. Waits
/// at most `limit`; a thread keeps draining stdout afterwards so the child never blocks on it.
pub fn listening_addr(child: &mut Child, limit: Duration) -> SocketAddr {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Bounded by the child: this ends when its stdout closes.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(limit) {
        Ok(Some(Ok(line))) => line,
        Ok(other) => panic!("the child closed stdout before `listening on`: {other:?}"),
        Err(_) => panic!("no `listening on` line within {limit:?}"),
    };
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line on stdout: {line:?}"))
}

/// A `caprl-fake-worker` process. Killed on drop.
pub struct FakeProc {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
}

impl FakeProc {
    /// Start one on `port` (0: any) with extra flags.
    pub fn start(port: u16, extra: &[&str]) -> FakeProc {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_caprl-fake-worker"))
            .arg("--port")
            .arg(port.to_string())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake worker");
        let addr = listening_addr(&mut child, START_TIMEOUT);
        FakeProc {
            child,
            port: addr.port(),
            args,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port with the same flags.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            let attempt = std::panic::catch_unwind(|| FakeProc::start(self.port, &args));
            match attempt {
                Ok(p) => {
                    *self = p;
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/stats", self.url()))
            .await
            .expect("stats answer")
            .json()
            .await
            .expect("stats JSON")
    }

    pub async fn requests(&self) -> u64 {
        self.stats().await["requests"].as_u64().expect("count")
    }

    pub async fn control(&self, patch: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("{}/control", self.url()))
            .json(&patch)
            .send()
            .await
            .expect("control answers");
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The gateway, in this process, on 127.0.0.1:port.
pub struct Gateway {
    pub state: AppState,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(args: &[String]) -> Gateway {
        Self::start_with_resolver(args, None).await
    }

    pub async fn start_with_resolver(
        args: &[String],
        resolver: Option<Arc<dyn Resolver>>,
    ) -> Gateway {
        let mut argv = vec![
            "caprl-gateway".to_string(),
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
        ];
        argv.extend_from_slice(args);
        let cli = config::try_parse_from(argv).expect("valid test settings");
        let serve_args = cli.command.into_serve().expect("serve");
        let serve_args: ServeArgs = *serve_args;
        let state = match resolver {
            Some(r) => AppState::build_with_resolver(serve_args, r),
            None => AppState::build(serve_args),
        }
        .expect("gateway state builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run_state = state.clone();
        let task = tokio::spawn(async move {
            caprl_gateway::serve::run(run_state, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("gateway runs");
        });
        Gateway {
            state,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Poll `/ready` until `want`, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(self.url("/ready")).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway not ready within {limit:?}");
    }

    /// Reachable workers of `model`, as `/ready` reports them.
    pub async fn reachable(&self, model: &str) -> u64 {
        let v: serde_json::Value = reqwest::get(self.url("/ready"))
            .await
            .expect("ready answers")
            .json()
            .await
            .expect("json");
        v["pools"][model]["reachable"].as_u64().unwrap_or(0)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Settings for a gateway in front of `workers`, plus `extra` flags.
pub fn args(workers: &[String], extra: &[&str]) -> Vec<String> {
    let mut a = Vec::new();
    for w in workers {
        a.push("--worker".to_string());
        a.push(w.clone());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A real PNG of `w`×`h` with a pattern seeded by `seed`.
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(3) ^ seed,
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

/// Real image bytes in `format`, with the gradient `image_bytes` in tests/e2e/e2e_util.py draws:
/// pixel (x, y) = (4x, 5y, x + y) mod 256.
pub fn image_bytes(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 4 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    encode(image::DynamicImage::ImageRgb8(img), format)
}

/// One colour all over.
pub fn solid_image(format: image::ImageFormat, w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    encode(image::DynamicImage::ImageRgb8(img), format)
}

pub fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode the test image");
    out
}

/// A data URL with a declared media type, as the openai client's users write them.
pub fn data_url_as(bytes: &[u8], media: &str) -> String {
    use base64::Engine;
    format!(
        "data:{media};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn data_url(bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:image;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A chat request with one image and a question.
pub fn image_request(image: &[u8], max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": "caprl",
        "max_tokens": max_tokens,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": "Please describe the image in detail."}
            ]}
        ]
    })
}

pub fn text_request(max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": "caprl",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Describe a kite."}]
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; the elapsed time when it held.
pub async fn wait_for<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A metric's value from the gateway's text exposition: the sum over series named `name` whose
/// labels include every `(key, value)` (for a histogram, ask for `NAME_count`).
pub fn metric(state: &AppState, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = state.metrics.render();
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}
