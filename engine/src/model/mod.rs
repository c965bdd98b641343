//! Qwen2.5-VL on Candle: loading a Hugging Face model directory and running it.
//!
//! Owns [`Qwen25VL`] — the configs, the vision tower (`vision.rs`), the text decoder
//! (`text.rs`), M-RoPE (`rope.rs`), weight loading (`weights.rs`), the layers both towers
//! share (`layers.rs`), and the CPU kernels of a decode step: the linear layers' product for a
//! few rows (`few_rows.rs`) and attention over the KV caches in place (`cached_attention.rs`) —
//! and its
//! [`StepModel`](crate::backend::StepModel) implementation: prefill runs the vision tower on the
//! prompt's images, splices the merged embeddings in at the image-pad tokens, runs the decoder
//! over the prompt and keeps the KV cache in a [`SeqState`]; decode stacks one token of each
//! sequence, runs the linear layers once for all of them and attention per sequence at its own
//! position (cache length + rope delta). Numerics follow transformers' eager implementation.

mod cached_attention;
mod few_rows;
mod layers;
mod rope;
mod text;
mod vision;
mod weights;

pub use rope::rope_index;
pub use text::KvCache;

use crate::backend::{ProcessedImage, PromptInput, StepModel};
use crate::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use text::TextModel;
use vision::VisionTower;
use weights::Weights;

/// A sequence's model state: its KV caches (one per layer) and M-RoPE offset. Not `Clone`
/// (the caches are written in place); [`SeqState::fork`] makes an independent copy.
#[derive(Debug, Default)]
pub struct SeqState {
    caches: Vec<KvCache>,
    rope_delta: i64,
    len: usize,
}

impl SeqState {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An independent deep copy, e.g. to sample several continuations of one prefill.
    pub fn fork(&self) -> Result<SeqState> {
        let caches = self
            .caches
            .iter()
            .map(KvCache::fork)
            .collect::<Result<_>>()?;
        Ok(SeqState {
            caches,
            rope_delta: self.rope_delta,
            len: self.len,
        })
    }
}

/// Qwen2.5-VL (e.g. CapRL-3B): weights and configuration.
pub struct Qwen25VL {
    config: ModelConfig,
    preprocessor: PreprocessorConfig,
    generation: GenerationConfig,
    vision: VisionTower,
    text: TextModel,
    device: Device,
}

impl Qwen25VL {
    /// Loads a Hugging Face model directory: `config.json`, the safetensors (single file or
    /// sharded), `preprocessor_config.json` (Qwen's defaults if absent) and
    /// `generation_config.json` (empty if absent).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let pp = dir.join("preprocessor_config.json");
        let preprocessor = if pp.exists() {
            PreprocessorConfig::load(&pp)?
        } else {
            PreprocessorConfig::default()
        };
        let gp = dir.join("generation_config.json");
        let generation = if gp.exists() {
            GenerationConfig::load(&gp)?
        } else {
            GenerationConfig::default()
        };
        let v = &config.vision;
        if preprocessor.patch_size != v.patch_size
            || preprocessor.merge_size != v.spatial_merge_size
            || preprocessor.temporal_patch_size != v.temporal_patch_size
        {
            bail!("preprocessor_config.json: patch/merge/temporal sizes differ from config.json's vision_config");
        }
        let w = Weights::load(dir, device, dtype)?;
        let vision = VisionTower::load(&w, &config.vision, config.text.hidden_size, device, dtype)?;
        let text = TextModel::load(&w, &config.text, config.tie_word_embeddings, device, dtype)?;
        Ok(Qwen25VL {
            config,
            preprocessor,
            generation,
            vision,
            text,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn preprocessor_config(&self) -> &PreprocessorConfig {
        &self.preprocessor
    }

    /// `generation_config.json` as loaded (empty if the directory has none): the source of the
    /// engine's sampling defaults.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    pub fn image_token_id(&self) -> u32 {
        self.config.image_token_id
    }

    pub fn spatial_merge_size(&self) -> usize {
        self.config.vision.spatial_merge_size
    }

    /// Ids that end generation: generation_config.json's `eos_token_id`, else config.json's.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        if self.generation.eos_token_id.is_empty() {
            self.config.text.eos_token_ids.clone()
        } else {
            self.generation.eos_token_id.clone()
        }
    }

    /// The vision tower on images' pixel values `[patches, patch_dim]` -> merged embeddings
    /// `[patches / merge^2, hidden]`, images in order.
    pub fn vision_forward(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grid_thw)
    }

    /// Prompt embeddings with the images' embeddings at the image-pad tokens.
    fn prompt_embeddings(&self, input_ids: &[u32], images: &[ProcessedImage]) -> Result<Tensor> {
        let text = self.text.embed(input_ids)?;
        let pads: Vec<usize> = input_ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == self.config.image_token_id)
            .map(|(i, _)| i)
            .collect();
        let m = self.spatial_merge_size();
        let expected: usize = images.iter().map(|im| im.tokens(m)).sum();
        if pads.len() != expected {
            bail!(
                "the prompt has {} image tokens but its {} image(s) need {expected}",
                pads.len(),
                images.len()
            );
        }
        if images.is_empty() {
            return Ok(text);
        }
        let pd = self.vision.patch_dim();
        let mut pixels = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for im in images {
            let n = im.grid_thw.iter().product::<usize>();
            if im.pixel_values.len() != n * pd {
                bail!(
                    "image of grid {:?} has {} pixel values, expected {}",
                    im.grid_thw,
                    im.pixel_values.len(),
                    n * pd
                );
            }
            pixels.extend_from_slice(&im.pixel_values);
            grids.push(im.grid_thw);
        }
        let rows = pixels.len() / pd;
        let pv = Tensor::from_vec(pixels, (rows, pd), &self.device)?;
        let img = self.vision.forward(&pv, &grids)?.to_dtype(text.dtype())?;
        // rows of cat([text, img]): position i takes text row i, or image row j for its j-th pad
        let mut idx: Vec<u32> = (0..input_ids.len() as u32).collect();
        for (j, &p) in pads.iter().enumerate() {
            idx[p] = (input_ids.len() + j) as u32;
        }
        let all = Tensor::cat(&[&text, &img], 0)?;
        Ok(all.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 0)?)
    }

    /// Runs a prompt from an empty cache; returns the state and the final hidden states.
    fn run_prompt(
        &self,
        input_ids: &[u32],
        images: &[ProcessedImage],
    ) -> Result<(SeqState, Tensor)> {
        if input_ids.is_empty() {
            bail!("empty prompt");
        }
        let x = self.prompt_embeddings(input_ids, images)?;
        let grids: Vec<[usize; 3]> = images.iter().map(|im| im.grid_thw).collect();
        let (pos, delta) = rope_index(
            input_ids,
            self.config.image_token_id,
            &grids,
            self.spatial_merge_size(),
        )?;
        let mut caches = Vec::new();
        let h = self
            .text
            .forward(x, &pos, &mut [&mut caches], &[input_ids.len()])?;
        Ok((
            SeqState {
                caches,
                rope_delta: delta,
                len: input_ids.len(),
            },
            h,
        ))
    }

    /// Logits `[seq, vocab]` (f32) of every prompt position.
    pub fn prompt_logits(&self, input_ids: &[u32], images: &[ProcessedImage]) -> Result<Tensor> {
        let (_, h) = self.run_prompt(input_ids, images)?;
        self.text.logits(&h)
    }

    /// Prefill: the state after the prompt and the last position's logits.
    pub fn prefill_prompt(&self, prompt: &PromptInput) -> Result<(SeqState, Vec<f32>)> {
        let (state, h) = self.run_prompt(&prompt.input_ids, &prompt.images)?;
        let last = h.narrow(0, h.dim(0)? - 1, 1)?;
        let logits = self.text.logits(&last)?.squeeze(0)?.to_vec1::<f32>()?;
        Ok((state, logits))
    }

    /// One decode step for several sequences: appends `tokens[i]` to `states[i]`; returns
    /// each sequence's next-token logits.
    pub fn decode_step(
        &self,
        states: &mut [&mut SeqState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        if states.len() != tokens.len() {
            bail!(
                "decode: {} states but {} tokens",
                states.len(),
                tokens.len()
            );
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.text.embed(tokens)?;
        let pos: Vec<[i64; 3]> = states
            .iter()
            .map(|s| [s.len as i64 + s.rope_delta; 3])
            .collect();
        let mut caches: Vec<&mut Vec<KvCache>> = states.iter_mut().map(|s| &mut s.caches).collect();
        let h = self
            .text
            .forward(x, &pos, &mut caches, &vec![1; tokens.len()])?;
        for s in states.iter_mut() {
            s.len += 1;
        }
        let logits = self.text.logits(&h)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}

impl StepModel for Qwen25VL {
    type State = SeqState;

    fn prefill(&mut self, prompt: &PromptInput) -> Result<(SeqState, Vec<f32>)> {
        self.prefill_prompt(prompt)
    }

    fn decode(&mut self, states: &mut [&mut SeqState], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.decode_step(states, tokens)
    }

    fn cached_tokens(state: &SeqState) -> usize {
        state.len
    }
}
