//! Decode throughput and prefill latency of the Candle engine on a mid-size random model.
//!
//! Make the model once with
//! `.venv-fixture/bin/python scripts/fixtures/make_tiny_qwen25vl.py --bench /tmp/bench-model`,
//! then `cargo bench -p caprl-engine --bench decode -- /tmp/bench-model [cpu|cuda:0] [f32|bf16]`
//! (or set `CAPRL_BENCH_MODEL`). Prints a table: decode tokens/s at batch 1, 4, 8 and 16
//! (the model's batched `decode`, one prefilled sequence per slot), then prefill time per
//! image size (vision tower + prompt) and the vision tower's time alone.
//!
//! Optional, through the environment (scripts/gpu/bench-3b.sh uses them; unset, nothing changes):
//! `CAPRL_BENCH_BATCHES=1,8,32` the decode batch sizes, `CAPRL_BENCH_STEPS=32` the timed decode
//! steps per batch, `CAPRL_BENCH_PREFILL=0` skips the image prefill table, and
//! `CAPRL_BENCH_JSON=FILE` also writes the results to FILE as JSON.

use anyhow::{Context, Result};
use candle_core::DType;
use caprl_engine::backend::{PromptInput, StepModel};
use caprl_engine::model::Qwen25VL;
use caprl_engine::processor;
use caprl_engine::prompt::PromptBuilder;
use caprl_engine::{parse_device, Message, Part};
use std::path::PathBuf;
use std::time::Instant;

/// The gateway's allocator (src/main.rs), so the figures are a Candle worker's behind it: on
/// glibc's malloc this bench showed prefill and batch-16 decode 15–30% faster than the gateway
/// runs them (docs/BENCHMARKS.md, "Decode kernels and the allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DECODE_STEPS: usize = 32;
const BATCHES: &[usize] = &[1, 4, 8, 16];
const IMAGE_SIZES: &[(u32, u32)] = &[(224, 224), (448, 448), (672, 504), (896, 896)];

/// A positive integer list from the environment (`CAPRL_BENCH_BATCHES=1,8,32`), or `default`.
fn env_list(name: &str, default: &[usize]) -> Result<Vec<usize>> {
    let Ok(v) = std::env::var(name) else {
        return Ok(default.to_vec());
    };
    let list = v
        .split(',')
        .map(|x| x.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("{name}={v:?}: expected positive integers separated by commas"))?;
    anyhow::ensure!(!list.is_empty(), "{name} is empty");
    Ok(list)
}

fn png(width: u32, height: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = args
        .first()
        .cloned()
        .or_else(|| std::env::var("CAPRL_BENCH_MODEL").ok())
        .map_or_else(|| PathBuf::from("/tmp/bench-model"), PathBuf::from);
    if !dir.join("config.json").exists() {
        println!(
            "no bench model at {}; see engine/benches/decode.rs to make one",
            dir.display()
        );
        return Ok(());
    }
    let device = parse_device(args.get(1).map_or("cpu", String::as_str))?;
    let dtype = match args.get(2).map(String::as_str) {
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        _ => DType::F32,
    };
    let batches = env_list("CAPRL_BENCH_BATCHES", BATCHES)?;
    let steps = match env_list("CAPRL_BENCH_STEPS", &[DECODE_STEPS])?.as_slice() {
        [n] => *n,
        _ => anyhow::bail!("CAPRL_BENCH_STEPS takes one number"),
    };
    let prefill_table = std::env::var("CAPRL_BENCH_PREFILL").map_or(true, |v| v != "0");
    let json_out = std::env::var_os("CAPRL_BENCH_JSON").map(PathBuf::from);
    let load_start = Instant::now();
    let mut model = Qwen25VL::load(&dir, &device, dtype).context("loading the bench model")?;
    let load_s = load_start.elapsed().as_secs_f64();
    let prompts = PromptBuilder::from_model_dir(&dir, model.spatial_merge_size())?;
    let text = prompts.build(
        &[Message::text(
            "user",
            "Please describe the image in detail.",
        )],
        Vec::new(),
    )?;
    println!("model {} on {device:?} {dtype:?}", dir.display());
    println!("{:>8} {:>12} {:>12}", "batch", "step ms", "tokens/s");
    let mut decode_rows = Vec::new();
    for &batch in &batches {
        let mut states = Vec::with_capacity(batch);
        for _ in 0..batch {
            states.push(model.prefill(&text.input)?.0);
        }
        let tokens = vec![42u32; batch];
        // One warm-up step, then the timed ones.
        let mut refs: Vec<&mut _> = states.iter_mut().collect();
        model.decode(&mut refs, &tokens)?;
        let t = Instant::now();
        for _ in 0..steps {
            model.decode(&mut refs, &tokens)?;
        }
        let per_step = t.elapsed().as_secs_f64() / steps as f64;
        println!(
            "{batch:>8} {:>12.2} {:>12.1}",
            per_step * 1e3,
            batch as f64 / per_step
        );
        decode_rows.push(serde_json::json!({
            "batch": batch,
            "step_ms": per_step * 1e3,
            "tokens_per_s": batch as f64 / per_step,
        }));
    }
    if let Some(path) = &json_out {
        let report = serde_json::json!({
            "model": dir.display().to_string(),
            "device": format!("{device:?}"),
            "dtype": format!("{dtype:?}"),
            "prompt_tokens": text.input.input_ids.len(),
            "warmup_steps": 1,
            "timed_steps": steps,
            "load_s": load_s,
            "decode": decode_rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !prefill_table {
        return Ok(());
    }
    println!(
        "\n{:>12} {:>10} {:>12} {:>10}",
        "image", "tokens", "prefill ms", "vision ms"
    );
    for &(w, h) in IMAGE_SIZES {
        let img = processor::decode_image(&png(w, h)?)?;
        let processed = processor::preprocess(&img, model.preprocessor_config())?;
        // The vision tower alone, on the same pixels (warm-up, then timed).
        let rows = processed.grid_thw.iter().product::<usize>();
        let pixels = candle_core::Tensor::from_vec(
            processed.pixel_values.clone(),
            (rows, processed.pixel_values.len() / rows),
            &device,
        )?
        .to_dtype(dtype)?;
        model.vision_forward(&pixels, &[processed.grid_thw])?;
        let t = Instant::now();
        model.vision_forward(&pixels, &[processed.grid_thw])?;
        let vision_ms = t.elapsed().as_secs_f64() * 1e3;
        let msg = Message::parts("user", vec![Part::Image, Part::Text("Describe.".into())]);
        let built = prompts.build(&[msg], vec![processed])?;
        let input: PromptInput = built.input;
        model.prefill(&input)?;
        let t = Instant::now();
        model.prefill(&input)?;
        println!(
            "{:>12} {:>10} {:>12.1} {:>10.1}",
            format!("{w}x{h}"),
            input.input_ids.len(),
            t.elapsed().as_secs_f64() * 1e3,
            vision_ms
        );
    }
    Ok(())
}
