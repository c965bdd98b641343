//! What the gateway's resize to the pixel budget costs, per image, on a 12-megapixel
//! photo-like JPEG (4000x3000, smooth shading, hard edges, noise; made here): decoding it
//! (libjpeg-turbo's decoder), resizing it to the smart_resize target of a budget (torchvision's
//! path, and Pillow's for comparison) and encoding that as PNG. Before the timings it prints,
//! per budget, the bytes sent as received and as resized.
//!
//!     cargo bench -p caprl-image --bench resize

use caprl_image::{decode_rgb, encode_png, resize, smart_resize, Resample};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

/// Budgets: CapRL-3B's own max_pixels (a 12 MP photo is under it), 1280 visual tokens (a common
/// --mm-processor-kwargs setting), 256 tokens, and the test fixture model's.
const BUDGETS: [(&str, usize); 4] = [
    ("12845056 (CapRL-3B)", 12_845_056),
    ("1003520 (1280 tokens)", 1_003_520),
    ("200704 (256 tokens)", 200_704),
    ("28224 (fixture model)", 28_224),
];

fn photo_jpeg() -> Vec<u8> {
    let (w, h) = (4000u32, 3000u32);
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 17) as i32 - 8;
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let inside = ((x as i32 - 2600).pow(2) + (y as i32 - 1200).pow(2)) < 700 * 700;
        let base = if inside {
            [230.0, 40.0, 60.0]
        } else {
            [
                255.0 * u,
                128.0 + 100.0 * (6.0 * u + 3.0 * v).sin(),
                255.0 * (1.0 - v),
            ]
        };
        image::Rgb(base.map(|c| (c as i32 + noise).clamp(0, 255) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out
}

fn bench(c: &mut Criterion) {
    let jpeg = photo_jpeg();
    let rgb = decode_rgb(&jpeg).expect("decodes").rgb;
    println!("12 MP photo-like JPEG: {} bytes", jpeg.len());
    println!("| budget (max_pixels) | target | sent | bytes | ratio |");
    println!("|---|---|---|---|---|");
    for (name, max) in BUDGETS {
        let (th, tw) = smart_resize(3000, 4000, 28, 3136, max).expect("geometry");
        if th * tw >= 4000 * 3000 {
            println!(
                "| {name} | {tw}x{th} | as received | {} | 1.0 |",
                jpeg.len()
            );
            continue;
        }
        let png = encode_png(&resize(&rgb, tw, th, Resample::Torchvision)).expect("png");
        let (sent, bytes) = if png.len() < jpeg.len() {
            ("PNG", png.len())
        } else {
            ("as received", jpeg.len())
        };
        println!(
            "| {name} | {tw}x{th} | {sent} | {bytes} | {:.1} |",
            jpeg.len() as f64 / bytes as f64
        );
    }
    let mut g = c.benchmark_group("12mp_jpeg");
    g.sample_size(10);
    g.bench_function("decode", |b| b.iter(|| decode_rgb(black_box(&jpeg))));
    let (th, tw) = smart_resize(3000, 4000, 28, 3136, 1_003_520).expect("geometry");
    for how in [Resample::Torchvision, Resample::Pil] {
        g.bench_function(format!("resize_1280_tokens_{how}"), |b| {
            b.iter(|| resize(black_box(&rgb), tw, th, how))
        });
    }
    let small = resize(&rgb, tw, th, Resample::Torchvision);
    g.bench_function("png_1280_tokens", |b| {
        b.iter(|| encode_png(black_box(&small)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
