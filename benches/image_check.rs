//! Cost of the per-image checks the gateway runs on every `data:` URL (`validate::images`),
//! split into its stages so the expensive one is visible:
//!
//! - `decode`:  data-URL parse (prefix, media type, `,`) + base64 decode into a fresh `Vec`
//! - `header`:  format sniff (`image::guess_format`) + dimensions from the header
//! - `xxh3`:    the content hash of the decoded bytes (xxh3-128)
//! - `whole`:   `check_data_url` itself (all of the above plus limits and smart_resize)
//! - `memcpy`:  copying the data URL once (`to_vec`), a floor for "touch every byte"
//! - `json_text`: serde_json reading the URL as a JSON string from bytes into `&str` (its
//!   byte-class scan for quotes, backslashes and control characters, then UTF-8 validation):
//!   how the gateway read image URLs until 2026-12-03
//! - `json_raw`: the same string read as `api::chat::RawUrl` (serde_json's raw read: `memchr`
//!   for the closing quote, no text checks; validation checks every byte in its base64 pass)
//!
//! Inputs are real, noisy JPEG and PNG images whose side is searched so that they encode to
//! about 64 KB and about 1 MB. Throughput is in bytes of the data URL for `decode`, `whole` and
//! `memcpy`, `json_*` (what arrives on the wire) and in decoded bytes for `header` and `xxh3`.
//!
//! `cargo bench --bench image_check` (about 1–2 minutes); `-- whole` runs a subset.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use caprl_gateway::api::chat::RawUrl;
use caprl_gateway::validate::images::{check_data_url, ImageLimits};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::Cursor;
use std::time::Duration;

/// The same engine as `validate::images` (standard alphabet, padding optional).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The gateway's default limits (`config::LimitArgs`).
const LIMITS: ImageLimits = ImageLimits {
    max_image_bytes: 32 << 20,
    max_image_pixels: 50_000_000,
    min_pixels: 3136,
    max_pixels: 12_845_056,
};

#[derive(Clone, Copy)]
enum Kind {
    Jpeg,
    Png,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Jpeg => "jpeg",
            Kind::Png => "png",
        }
    }
}

/// A photo-like image: smooth gradients plus per-pixel noise, so encoders cannot cheat.
fn encode(kind: Kind, side: u32) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(u64::from(side));
    let (w, h) = (side * 4 / 3, side);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let n = |rng: &mut fastrand::Rng| rng.u8(..48);
        image::Rgb([
            ((x * 255 / w) as u8).wrapping_add(n(&mut rng)),
            ((y * 255 / h) as u8).wrapping_add(n(&mut rng)),
            (((x + y) * 127 / (w + h)) as u8).wrapping_add(n(&mut rng)),
        ])
    });
    let mut out = Vec::new();
    match kind {
        Kind::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
            img.write_with_encoder(enc).expect("encode jpeg");
        }
        Kind::Png => {
            img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
                .expect("encode png");
        }
    }
    out
}

/// Binary-search the image side so the encoding is within 3% of `target` bytes.
fn image_of_about(kind: Kind, target: usize) -> Vec<u8> {
    let (mut lo, mut hi) = (16u32, 4096u32);
    let mut best = encode(kind, lo);
    for _ in 0..16 {
        let mid = (lo + hi) / 2;
        let bytes = encode(kind, mid);
        let err = |b: &Vec<u8>| (b.len() as f64 / target as f64 - 1.0).abs();
        if err(&bytes) < err(&best) {
            best = bytes.clone();
        }
        if err(&best) < 0.03 || hi - lo <= 1 {
            break;
        }
        if bytes.len() < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    best
}

fn parse_and_decode(url: &str) -> Vec<u8> {
    let rest = &url[5..];
    let (meta, payload) = rest.split_once(',').expect("a data URL");
    assert!(meta.ends_with(";base64"));
    // The gateway's decoder: SIMD, padding optional.
    base64_simd::STANDARD_NO_PAD
        .decode_to_vec(payload.trim_end().trim_end_matches('=').as_bytes())
        .expect("valid base64")
}

fn header(data: &[u8]) -> (u32, u32) {
    let format = image::guess_format(data).expect("a known format");
    image::ImageReader::with_format(Cursor::new(data), format)
        .into_dimensions()
        .expect("a readable header")
}

fn bench(c: &mut Criterion) {
    for (label, target) in [("64KB", 64 * 1024), ("1MB", 1024 * 1024)] {
        let mut g = c.benchmark_group(format!("image_check/{label}"));
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(20);
        for kind in [Kind::Jpeg, Kind::Png] {
            let bytes = image_of_about(kind, target);
            let url = format!(
                "data:image/{};base64,{}",
                kind.name(),
                BASE64.encode(&bytes)
            );
            let (w, h) = header(&bytes);
            eprintln!(
                "input {label}/{}: {w}x{h}, {} bytes decoded, {} bytes as a data URL",
                kind.name(),
                bytes.len(),
                url.len()
            );
            let id = |stage: &str| BenchmarkId::new(stage, kind.name());

            g.throughput(Throughput::Bytes(url.len() as u64));
            g.bench_function(id("decode"), |b| {
                b.iter(|| parse_and_decode(black_box(&url)))
            });
            g.bench_function(id("whole"), |b| {
                b.iter(|| {
                    check_data_url(black_box(&url), &LIMITS, false, "p").expect("a valid image")
                })
            });
            g.bench_function(id("memcpy"), |b| {
                b.iter(|| black_box(url.as_bytes()).to_vec())
            });
            let quoted = format!("\"{url}\"");
            g.bench_function(id("json_text"), |b| {
                b.iter(|| {
                    serde_json::from_slice::<&str>(black_box(quoted.as_bytes())).expect("a string")
                })
            });
            g.bench_function(id("json_raw"), |b| {
                b.iter(|| {
                    serde_json::from_slice::<RawUrl>(black_box(quoted.as_bytes()))
                        .expect("a string")
                })
            });

            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(id("header"), |b| b.iter(|| header(black_box(&bytes))));
            g.bench_function(id("xxh3"), |b| {
                b.iter(|| xxhash_rust::xxh3::xxh3_128(black_box(&bytes)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
