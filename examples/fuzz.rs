//! A mutation fuzzer for the gateway's parsers, on the stable toolchain and without libFuzzer
//! or AFL: the targets are tests/fuzz/targets.rs (request validation, image checks, the SSE
//! decoder), the same code tests/fuzz_corpus.rs replays in CI.
//!
//! ```text
//! cargo run --example fuzz -- TARGET SECONDS [--seed N] [--save]
//! scripts/fuzz.sh SECONDS      # every target, one after the other
//! ```
//!
//! No coverage instrumentation: the feedback is each target's outcome signature (the error
//! code and field it answered, or the shape it accepted). An input whose signature is new joins
//! the working corpus; `--save` also writes it to tests/fuzz/corpus/TARGET/ (at most 64 per
//! run, each at most 16 KiB) for the replay. Mutations are byte-level (flips, interesting
//! bytes, inserts, deletes, repeats, splices, dictionary tokens) and, for JSON inputs,
//! structural (a random node replaced by an awkward value). A panic, or a broken property
//! (the targets assert them), is a finding: the input is written to
//! tests/fuzz/findings/TARGET-HASH.bin and the run goes on. The dev profile is used on purpose:
//! its overflow checks turn arithmetic mistakes into findings.

#[path = "../tests/fuzz/targets.rs"]
mod targets;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_INPUT: usize = 256 << 10;
const MAX_SAVED: usize = 64;
const MAX_SAVED_BYTES: usize = 16 << 10;

const DICT: &[&[u8]] = &[
    b"\"model\"",
    b"\"caprl\"",
    b"\"messages\"",
    b"\"role\"",
    b"\"user\"",
    b"\"system\"",
    b"\"content\"",
    b"\"type\"",
    b"\"text\"",
    b"\"image_url\"",
    b"\"url\"",
    b"\"detail\"",
    b"\"file\"",
    b"\"file_id\"",
    b"\"file-abc\"",
    b"\"prompt\"",
    b"\"max_tokens\"",
    b"\"max_completion_tokens\"",
    b"\"n\"",
    b"\"stream\"",
    b"\"stream_options\"",
    b"\"include_usage\"",
    b"\"stop\"",
    b"\"seed\"",
    b"\"logprobs\"",
    b"\"priority\"",
    b"data:image/png;base64,",
    b"data:image;base64,",
    b"data:image/jpeg;base64,",
    b"data:image/webp;base64,",
    b"data:text/plain;base64,",
    b";charset=utf-8",
    b"https://",
    b"true",
    b"false",
    b"null",
    b"0",
    b"-1",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"4294967296",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\uDBFF\\uDFFF\"",
    b"[[[[[[[[[[[[",
    b"]]]]]]]]]]]]",
    b"{\"a\":{\"a\":{\"a\":",
    b"}}}",
    b"data: ",
    b"event: ",
    b"id: ",
    b"retry: ",
    b"\n\n",
    b"\r\n",
    b"\r",
    b"[DONE]",
    b"\"choices\"",
    b"\"delta\"",
    b"\"usage\"",
    b"\"prompt_tokens\"",
    b"\"completion_tokens\"",
    b"\x89PNG\r\n\x1a\n",
    b"IHDR",
    b"\xff\xd8\xff",
    b"RIFF",
    b"WEBPVP8L",
    b"GIF89a",
    b"BM",
];

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'9', b'-',
    b'e', b'=', b'/', b'+', b'\n', b'\r', b' ',
];

/// The message of the last panic, so a finding can say what broke.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn usage() -> ! {
    eprintln!(
        "usage: fuzz TARGET SECONDS [--seed N] [--save]; targets: {:?}",
        targets::TARGETS
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(secs)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<f64>().ok()),
    ) else {
        usage()
    };
    if !targets::TARGETS.contains(&target.as_str()) {
        usage()
    }
    let seed = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let save = args.iter().any(|a| a == "--save");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let corpus_dir = root.join("corpus").join(target);
    let findings_dir = root.join("findings");

    std::panic::set_hook(Box::new(|info| {
        let mut last = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner());
        *last = info.to_string();
    }));

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut corpus: Vec<Vec<u8>> = targets::seeds(target);
    corpus.extend(read_dir(&corpus_dir));
    let mut seen: HashSet<String> = HashSet::new();
    for input in &corpus {
        match std::panic::catch_unwind(|| targets::run(target, input)) {
            Ok(sig) => {
                seen.insert(sig);
            }
            Err(_) => eprintln!("a corpus input already fails: {}", last_panic()),
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let (mut execs, mut saved, mut findings) = (0u64, 0usize, 0usize);
    let mut found: HashSet<u64> = HashSet::new();
    // Bounded in time, and in count as a second bound.
    while Instant::now() < deadline && execs < u64::MAX / 2 {
        let base = &corpus[rng.usize(..corpus.len())];
        let mut input = base.clone();
        for _ in 0..rng.usize(1..=4) {
            mutate(&mut rng, &mut input, &corpus);
        }
        input.truncate(MAX_INPUT);
        execs += 1;
        match std::panic::catch_unwind(|| targets::run(target, &input)) {
            Ok(sig) => {
                if seen.insert(sig) {
                    if save && saved < MAX_SAVED && input.len() <= MAX_SAVED_BYTES {
                        write(&corpus_dir, &format!("{:016x}", hash(&input)), &input);
                        saved += 1;
                    }
                    corpus.push(input);
                }
            }
            Err(_) => {
                let h = hash(&input);
                if found.insert(h) {
                    findings += 1;
                    let name = format!("{target}-{h:016x}.bin");
                    write(&findings_dir, &name, &input);
                    eprintln!("FINDING {name}: {}", last_panic());
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "target={target} seed={seed} seconds={elapsed:.0} execs={execs} execs_per_sec={:.0} \
         corpus={} signatures={} saved={saved} findings={findings}",
        execs as f64 / elapsed.max(1e-9),
        corpus.len(),
        seen.len()
    );
    if std::env::var_os("FUZZ_SIGNATURES").is_some() {
        let mut all: Vec<&String> = seen.iter().collect();
        all.sort();
        for sig in all {
            println!("  {sig}");
        }
    }
    if findings > 0 {
        std::process::exit(1);
    }
}

fn last_panic() -> String {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn hash(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn read_dir(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join(name), data))
    {
        eprintln!("cannot write {}: {e}", dir.join(name).display());
    }
}

fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len();
    match rng.u8(..10) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            input[i] ^= 1 << rng.u8(..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            input[i] = INTERESTING[rng.usize(..INTERESTING.len())];
        }
        2 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let a = rng.usize(..len);
            let b = (a + rng.usize(1..=16)).min(len);
            input.drain(a..b);
        }
        4 if len > 0 => {
            // Repeat a slice: deep nesting, long strings, many parts.
            let a = rng.usize(..len);
            let b = (a + rng.usize(1..=8)).min(len);
            let piece = input[a..b].to_vec();
            let times = rng.usize(1..=64);
            let at = rng.usize(..=input.len());
            input.splice(
                at..at,
                piece.iter().copied().cycle().take(piece.len() * times),
            );
        }
        5 => {
            let other = &corpus[rng.usize(..corpus.len())];
            if !other.is_empty() {
                let from = rng.usize(..other.len());
                let at = rng.usize(..=len);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
        6 | 7 => {
            let token = DICT[rng.usize(..DICT.len())];
            let at = rng.usize(..=len);
            input.splice(at..at, token.iter().copied());
        }
        _ => {
            if let Some(v) = json_mutate(rng, input) {
                *input = v;
            }
        }
    }
}

/// Replace one node of a JSON input with an awkward value.
fn json_mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(input).ok()?;
    let mut nodes = 0usize;
    count(&v, &mut nodes);
    let pick = rng.usize(..nodes.max(1));
    let replacement = awkward(rng);
    let mut i = 0usize;
    replace(&mut v, pick, &mut i, &replacement);
    serde_json::to_vec(&v).ok()
}

fn count(v: &serde_json::Value, n: &mut usize) {
    *n += 1;
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| count(x, n)),
        serde_json::Value::Object(o) => o.values().for_each(|x| count(x, n)),
        _ => {}
    }
}

fn replace(v: &mut serde_json::Value, pick: usize, i: &mut usize, with: &serde_json::Value) {
    if *i == pick {
        *v = with.clone();
        *i += 1;
        return;
    }
    *i += 1;
    match v {
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| replace(x, pick, i, with)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| replace(x, pick, i, with)),
        _ => {}
    }
}

fn awkward(rng: &mut fastrand::Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.u8(..14) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1.0e308),
        5 => json!(""),
        6 => json!("\u{0}\u{ffff}\u{10ffff}"),
        7 => json!([]),
        8 => json!({}),
        9 => json!([[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]),
        10 => {
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        }
        11 => {
            json!([{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:image;base64,"}}])
        }
        12 => json!(true),
        _ => json!("x".repeat(rng.usize(1..5000))),
    }
}
