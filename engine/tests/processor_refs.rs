//! The engine's image processor against transformers' two Qwen2-VL processors, on the images
//! of tests/fixtures/resize (`scripts/fixtures/make_resize_refs.py`): for each image and each
//! path, the grid and the SHA-256 of the float32 `pixel_values` are the reference's, i.e. every
//! value is bit-identical (torchvision: `Qwen2VLImageProcessor`, what vLLM runs; pil:
//! `Qwen2VLImageProcessorPil`).

mod common;

use caprl_engine::config::PreprocessorConfig;
use caprl_engine::processor::{decode_image, preprocess};
use caprl_engine::Resample;
use common::*;
use sha2::{Digest, Sha256};

#[test]
fn pixel_values_are_bit_identical_to_both_processors() {
    let dir = fixtures().join("resize");
    let index = json(&dir.join("reference.json"));
    let base =
        PreprocessorConfig::load(&model_dir("tiny-qwen25vl-a").join("preprocessor_config.json"))
            .expect("cfg");
    assert_eq!(
        (base.min_pixels as u64, base.max_pixels as u64),
        (
            index["min_pixels"].as_u64().expect("min"),
            index["max_pixels"].as_u64().expect("max")
        ),
        "the references were made with the fixture model's pixel budget"
    );
    let images = index["images"].as_object().expect("images");
    assert!(images.len() >= 8);
    for (name, entry) in images {
        let file = entry["file"].as_str().expect("file");
        let img = decode_image(&std::fs::read(dir.join(file)).expect("input")).expect("decodes");
        for how in [Resample::Torchvision, Resample::Pil] {
            let cfg = PreprocessorConfig {
                resample: how,
                ..base.clone()
            };
            let p = preprocess(&img, &cfg).expect("preprocesses");
            let want = &entry[how.as_str()];
            let grid: Vec<u64> = want["grid_thw"]
                .as_array()
                .expect("grid")
                .iter()
                .map(|g| g.as_u64().expect("int"))
                .collect();
            assert_eq!(
                p.grid_thw.iter().map(|&g| g as u64).collect::<Vec<_>>(),
                grid,
                "{name} {how}: grid"
            );
            let mut hash = Sha256::new();
            for v in &p.pixel_values {
                hash.update(v.to_le_bytes());
            }
            let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                got,
                want["pixel_values_sha256"].as_str().expect("sha"),
                "{name} {how}: pixel_values differ from the processor's"
            );
        }
    }
}
