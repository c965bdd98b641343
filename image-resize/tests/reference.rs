//! `resize` against the references of `scripts/fixtures/make_resize_refs.py`: for every image
//! in tests/fixtures/resize, smart_resize gives the processors' size, and both paths give the
//! very bytes transformers' processors resized to (torchvision: `Qwen2VLImageProcessor`, the
//! default and vLLM's; pil: `Qwen2VLImageProcessorPil`).

use caprl_image::{decode_rgb, resize, smart_resize, Resample};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/resize")
}

fn read_png(name: &str) -> image::RgbImage {
    let bytes = std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    decode_rgb(&bytes).expect("fixture decodes").rgb
}

#[test]
fn both_paths_match_their_reference_byte_for_byte() {
    let index: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let (min, max) = (
        index["min_pixels"].as_u64().expect("min") as usize,
        index["max_pixels"].as_u64().expect("max") as usize,
    );
    let images = index["images"].as_object().expect("images");
    assert!(images.len() >= 8, "the fixture set shrank");
    let (mut up, mut down) = (0, 0);
    for (name, entry) in images {
        let file = entry["file"].as_str().expect("file");
        let decoded =
            decode_rgb(&std::fs::read(fixtures().join(file)).expect("input")).expect("decodes");
        assert!(
            decoded.as_pillow,
            "{file}: not decoded as Pillow decodes it"
        );
        let src = decoded.rgb;
        let (w, h) = (src.width() as usize, src.height() as usize);
        let (rh, rw) = smart_resize(h, w, 28, min, max).expect("geometry");
        if rw * rh > w * h {
            up += 1;
        } else {
            down += 1;
        }
        for how in [Resample::Torchvision, Resample::Pil] {
            let want = &entry[how.as_str()]["resized"];
            assert_eq!(
                [rw as u64, rh as u64],
                [want[0].as_u64().expect("w"), want[1].as_u64().expect("h")],
                "{name}: smart_resize"
            );
            let reference = read_png(&format!("{name}.{how}.png"));
            let ours = resize(&src, rw, rh, how);
            let differing = ours
                .as_raw()
                .iter()
                .zip(reference.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(ours.dimensions(), reference.dimensions(), "{name} {how}");
            assert_eq!(
                differing, 0,
                "{name} ({w}x{h} -> {rw}x{rh}) {how}: {differing} bytes differ"
            );
        }
        // The two references differ on these images: the test tells the paths apart.
        assert!(
            entry["torchvision_vs_pil"]["bytes_differing"]
                .as_u64()
                .expect("diff")
                > 0,
            "{name}: both references agree, the fixture cannot tell the paths apart"
        );
    }
    assert!(up >= 2 && down >= 2, "up {up}, down {down}");
}
