//! Parity of the Candle Qwen2.5-VL against transformers, on the tiny fixture models.
//!
//! Reads `tests/fixtures/` (see its README and `scripts/fixtures/make_tiny_qwen25vl.py`):
//! pixel values of the PIL image processor, vision tower outputs, 3-D position ids, prompt
//! logits and 32 greedy tokens of models A (nested config, sharded, untied) and B (flat
//! config, single file, tied), all in f32 with eager attention. Also checks batched decoding
//! against decoding alone, and forked states. Reading the model directory's files is tested in
//! `config.rs`.

mod common;

use candle_core::{DType, Device, Tensor};
use caprl_engine::backend::{PromptInput, StepModel};
use caprl_engine::config::PreprocessorConfig;
use caprl_engine::model::{rope_index, Qwen25VL};
use caprl_engine::processor::decode_image;
use caprl_engine::Resample;
use common::*;

#[test]
fn pixel_values_match_reference() {
    let refs = Ref::load(&fixtures().join("images/reference.safetensors"));
    let cfg =
        PreprocessorConfig::load(&model_dir("tiny-qwen25vl-a").join("preprocessor_config.json"))
            .expect("cfg");
    for name in image_names() {
        let bytes =
            std::fs::read(fixtures().join(format!("images/{name}.png"))).expect("image file");
        let img = decode_image(&bytes).expect("decodes");
        let (shape, rgb) = refs.get(&format!("{name}.resized_rgb"));
        let resized = caprl_image::resize(&img, shape[1], shape[0], Resample::Pil);
        let rgb_diff = resized
            .as_raw()
            .iter()
            .zip(rgb)
            .filter(|(&a, &b)| a as f64 != b)
            .count();
        assert_eq!(
            rgb_diff, 0,
            "{name}: resized RGB differs from PIL's BICUBIC in {rgb_diff} bytes"
        );
        let p = processed(&name, &cfg);
        let grid = refs.ids(&format!("{name}.image_grid_thw"));
        assert_eq!(
            p.grid_thw.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            grid,
            "{name}: grid"
        );
        let d = max_abs_diff(
            &p.pixel_values,
            &refs.get(&format!("{name}.pixel_values")).1,
        );
        println!("pixel_values {name}: max abs diff {d:e}");
        assert!(d <= 1e-5, "{name}: pixel values differ by {d}");
    }
}

fn check_vision(model: &str) {
    let (m, m64) = (load(model), load_as(model, DType::F64));
    let images = Ref::load(&fixtures().join("images/reference.safetensors"));
    let refs = Ref::load(&model_dir(model).join("reference/reference.safetensors"));
    for name in image_names() {
        let (shape, pv) = images.get(&format!("{name}.pixel_values"));
        let pv = Tensor::from_vec(pv.clone(), (shape[0], shape[1]), &Device::Cpu).expect("tensor");
        let g = images.ids(&format!("{name}.image_grid_thw"));
        let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
        let out = to_f32(&m.vision_forward(&pv, &[grid]).expect("vision forward"));
        let exact = to_f64(&m64.vision_forward(&pv, &[grid]).expect("vision forward"));
        let want = &refs.get(&format!("image.{name}.vision_embeds")).1;
        check_close(&format!("{model} vision {name}"), &out, &exact, want, 5e-4);
    }
}

#[test]
fn vision_tower_matches_reference_a() {
    check_vision("tiny-qwen25vl-a");
}

#[test]
fn vision_tower_matches_reference_b() {
    check_vision("tiny-qwen25vl-b");
}

/// The prompt cases of a model's reference: (name, input ids, images).
fn cases(model: &str, m: &Qwen25VL) -> Vec<(String, PromptInput)> {
    let idx = json(&model_dir(model).join("reference/reference.json"));
    let refs = Ref::load(&model_dir(model).join("reference/reference.safetensors"));
    let mut out = Vec::new();
    for (name, case) in idx["cases"].as_object().expect("cases") {
        let images = case["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|n| processed(n.as_str().expect("name"), m.preprocessor_config()))
            .collect();
        out.push((
            name.clone(),
            PromptInput {
                input_ids: refs.ids(&format!("case.{name}.input_ids")),
                images,
            },
        ));
    }
    out
}

fn check_prompts(model: &str) {
    let (m, m64) = (load(model), load_as(model, DType::F64));
    let refs = Ref::load(&model_dir(model).join("reference/reference.safetensors"));
    for (name, p) in cases(model, &m) {
        let grids: Vec<[usize; 3]> = p.images.iter().map(|i| i.grid_thw).collect();
        let (pos, delta) = rope_index(
            &p.input_ids,
            m.image_token_id(),
            &grids,
            m.spatial_merge_size(),
        )
        .expect("rope");
        let (_, ref_pos) = refs.get(&format!("case.{name}.position_ids"));
        let l = p.input_ids.len();
        for (i, q) in pos.iter().enumerate() {
            for a in 0..3 {
                assert_eq!(
                    q[a] as f64,
                    ref_pos[a * l + i],
                    "{model} {name}: position {i} axis {a}"
                );
            }
        }
        assert_eq!(
            delta as f64,
            refs.get(&format!("case.{name}.rope_deltas")).1[0],
            "{model} {name}: rope delta"
        );
        let logits = m
            .prompt_logits(&p.input_ids, &p.images)
            .expect("prompt logits");
        let exact = m64
            .prompt_logits(&p.input_ids, &p.images)
            .expect("prompt logits");
        let key = format!("case.{name}.prompt_logits");
        let (logits, exact, want) = if refs.has(&key) {
            (logits, exact, &refs.get(&key).1)
        } else {
            let last = |t: Tensor| t.get(l - 1).expect("last row");
            (
                last(logits),
                last(exact),
                &refs.get(&format!("case.{name}.last_logits")).1,
            )
        };
        let label = format!(
            "{model} prompt logits {name} (L={l}, all rows: {})",
            refs.has(&key)
        );
        check_close(&label, &to_f32(&logits), &to_f64(&exact), want, 5e-3);
    }
}

#[test]
fn prompt_logits_match_reference_a() {
    check_prompts("tiny-qwen25vl-a");
}

#[test]
fn prompt_logits_match_reference_b() {
    check_prompts("tiny-qwen25vl-b");
}

/// Greedy argmax with the eos ids masked (the reference used min_new_tokens = 32).
fn argmax(logits: &[f32], masked: &[u32]) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (i, &v) in logits.iter().enumerate() {
        if !masked.contains(&(i as u32)) && v > best.0 {
            best = (v, i as u32);
        }
    }
    best.1
}

/// Greedy generation of `steps` tokens for several prompts decoded together: each sequence's
/// tokens and the logits of every step.
fn greedy(
    m: &mut Qwen25VL,
    prompts: &[&PromptInput],
    steps: usize,
    eos: &[u32],
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut states = Vec::new();
    let mut out = Vec::new();
    for p in prompts {
        let (s, logits) = m.prefill(p).expect("prefill");
        states.push(s);
        out.push((vec![argmax(&logits, eos)], vec![logits]));
    }
    for _ in 1..steps {
        let tokens: Vec<u32> = out
            .iter()
            .map(|(t, _)| *t.last().expect("a token"))
            .collect();
        let mut refs: Vec<_> = states.iter_mut().collect();
        let logits = m.decode(&mut refs, &tokens).expect("decode");
        for (o, l) in out.iter_mut().zip(logits) {
            o.0.push(argmax(&l, eos));
            o.1.push(l);
        }
    }
    out
}

fn check_greedy(model: &str) {
    let (mut m, mut m64) = (load(model), load_as(model, DType::F64));
    let refs = Ref::load(&model_dir(model).join("reference/reference.safetensors"));
    let eos = m.eos_token_ids();
    for (name, p) in cases(model, &m) {
        let want = refs.ids(&format!("case.{name}.gen_ids"));
        let (got, logits) = greedy(&mut m, &[&p], want.len(), &eos).remove(0);
        let (got64, exact) = greedy(&mut m64, &[&p], want.len(), &eos).remove(0);
        assert_eq!(got, want, "{model} {name}: greedy tokens");
        assert_eq!(got64, want, "{model} {name}: greedy tokens (f64)");
        let exact: Vec<f64> = exact.concat().iter().map(|&x| x as f64).collect();
        let label = format!("{model} greedy {name}: 32 tokens equal; step logits");
        check_close(
            &label,
            &logits.concat(),
            &exact,
            &refs.get(&format!("case.{name}.gen_logits")).1,
            5e-3,
        );
    }
}

#[test]
fn greedy_tokens_match_reference_a() {
    check_greedy("tiny-qwen25vl-a");
}

#[test]
fn greedy_tokens_match_reference_b() {
    check_greedy("tiny-qwen25vl-b");
}

#[test]
fn batched_decode_matches_decoding_alone() {
    let model = "tiny-qwen25vl-a";
    let mut m = load(model);
    let eos = m.eos_token_ids();
    let all = cases(model, &m);
    let picked: Vec<&PromptInput> = ["text_only", "one_image", "two_images", "caprl"]
        .iter()
        .map(|n| &all.iter().find(|(name, _)| name == n).expect("case").1)
        .collect();
    let lens: Vec<usize> = picked.iter().map(|p| p.input_ids.len()).collect();
    assert!(
        lens.windows(2).all(|w| w[0] != w[1]),
        "prompt lengths differ: {lens:?}"
    );
    let together = greedy(&mut m, &picked, 32, &eos);
    for (i, p) in picked.iter().enumerate() {
        let alone = greedy(&mut m, &[p], 32, &eos).remove(0);
        assert_eq!(
            together[i].0, alone.0,
            "sequence {i}: batched tokens differ from alone"
        );
        let d = max_abs_diff(
            &together[i].1.concat(),
            &alone
                .1
                .concat()
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        );
        println!(
            "batch of 4, sequence {i} (L={}): logits max abs diff vs alone {d:e}",
            lens[i]
        );
        assert!(d <= 1e-4, "sequence {i}: batched logits differ by {d}");
    }
}

#[test]
fn forked_state_decodes_independently() {
    let mut m = load("tiny-qwen25vl-a");
    let (_, p) = cases("tiny-qwen25vl-a", &m).remove(0);
    let (mut a, _) = m.prefill(&p).expect("prefill");
    let mut b = a.fork().expect("fork");
    m.decode(&mut [&mut a], &[5]).expect("decode");
    m.decode(&mut [&mut b], &[7]).expect("decode"); // must not touch a's cache
    let got = m.decode(&mut [&mut a], &[9]).expect("decode").remove(0);
    let (mut fresh, _) = m.prefill(&p).expect("prefill");
    m.decode(&mut [&mut fresh], &[5]).expect("decode");
    let want = m.decode(&mut [&mut fresh], &[9]).expect("decode").remove(0);
    assert_eq!(got, want, "a forked state's decoding changed the original");
    assert_eq!(Qwen25VL::cached_tokens(&a), p.input_ids.len() + 2);
}
