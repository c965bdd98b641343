//! Sampling: one sequence's next-token logits become a token, with vLLM's semantics.
//!
//! A request's parameters ([`RequestSampling`], every field optional) are resolved once against
//! the model's defaults ([`SamplingDefaults`], from `generation_config.json` as vLLM does, or
//! OpenAI's) into [`SamplingParams`]. Each step the scheduler hands a sequence's logits to
//! [`sample`], which applies, in vLLM's order: min_tokens masking, repetition penalty (prompt
//! and output tokens), frequency and presence penalties (output tokens), then either argmax
//! (temperature 0) or temperature, min_p, top_k, top_p and a draw from the sequence's own
//! [`SeqRng`]. Each sequence owns its RNG, so its samples never depend on who else is in the
//! batch. Everything here is a pure function of its inputs.

use crate::config::GenerationConfig;
use std::collections::HashMap;

/// Below this a temperature means greedy decoding (vLLM's `_SAMPLING_EPS`).
pub const SAMPLING_EPS: f32 = 1e-5;

/// Candidates looked at first for top-p before falling back to a full sort: a top-p nucleus
/// almost always lies within the 1024 likeliest tokens, and sorting 151k logits per sequence
/// per step would dominate a batched decode step.
const NUCLEUS_PREFILTER: usize = 1024;

/// What a request asked for; `None` falls back to the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    pub min_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub n: Option<usize>,
}

/// Defaults for what a request leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or negative: off.
    pub top_k: i64,
    pub min_p: f32,
    pub repetition_penalty: f32,
    /// `max_new_tokens` from generation_config.json, if it sets one.
    pub max_tokens: Option<usize>,
    /// Tokens that end a sequence (generation_config's `eos_token_id`).
    pub eos_token_ids: Vec<u32>,
}

impl Default for SamplingDefaults {
    /// OpenAI's defaults: temperature 1, top_p 1, no penalties.
    fn default() -> Self {
        SamplingDefaults {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            max_tokens: None,
            eos_token_ids: Vec::new(),
        }
    }
}

impl SamplingDefaults {
    /// The defaults a model's `generation_config.json` gives (read once, with the model:
    /// [`Qwen25VL::load`](crate::model::Qwen25VL::load)). The eos ids are always taken from it;
    /// the sampling values only when `use_generation_config` (vLLM's `--generation-config
    /// auto`). An empty config gives OpenAI's defaults.
    pub fn from_generation_config(gc: &GenerationConfig, use_generation_config: bool) -> Self {
        let base = SamplingDefaults {
            eos_token_ids: gc.eos_token_id.clone(),
            ..SamplingDefaults::default()
        };
        if !use_generation_config {
            return base;
        }
        SamplingDefaults {
            temperature: gc.temperature.unwrap_or(base.temperature),
            top_p: gc.top_p.unwrap_or(base.top_p),
            top_k: gc
                .top_k
                .map_or(base.top_k, |k| i64::try_from(k).unwrap_or(i64::MAX)),
            min_p: gc.min_p.unwrap_or(base.min_p),
            repetition_penalty: gc.repetition_penalty.unwrap_or(base.repetition_penalty),
            max_tokens: gc.max_new_tokens,
            ..base
        }
    }
}

/// A bad sampling parameter: the message and the field it names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub message: String,
    pub param: &'static str,
}

fn bad(param: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        message: message.into(),
        param,
    }
}

/// Fully resolved parameters of one request (shared by its `n` sequences).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// `None` until the prompt length is known; the engine fills in the room left.
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub eos_token_ids: Vec<u32>,
    pub n: usize,
}

impl RequestSampling {
    /// Fill in defaults and check ranges as vLLM does.
    pub fn resolve(&self, d: &SamplingDefaults) -> Result<SamplingParams, ParamError> {
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(bad("temperature", "temperature must be non-negative"));
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad("top_p", "top_p must be in (0, 1]"));
        }
        let top_k = self.top_k.unwrap_or(d.top_k);
        if top_k < -1 {
            return Err(bad("top_k", "top_k must be -1 (disable), 0 or at least 1"));
        }
        let min_p = self.min_p.unwrap_or(d.min_p);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(bad("min_p", "min_p must be in [0, 1]"));
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(bad(
                "repetition_penalty",
                "repetition_penalty must be greater than zero",
            ));
        }
        let presence_penalty = self.presence_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&presence_penalty) {
            return Err(bad(
                "presence_penalty",
                "presence_penalty must be in [-2, 2]",
            ));
        }
        let frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&frequency_penalty) {
            return Err(bad(
                "frequency_penalty",
                "frequency_penalty must be in [-2, 2]",
            ));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 {
            return Err(bad("n", "n must be at least 1"));
        }
        let max_tokens = self.max_tokens.or(d.max_tokens);
        if max_tokens == Some(0) {
            return Err(bad("max_tokens", "max_tokens must be at least 1"));
        }
        let min_tokens = self.min_tokens.unwrap_or(0);
        if matches!(max_tokens, Some(m) if min_tokens > m) {
            return Err(bad("min_tokens", "min_tokens must not exceed max_tokens"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(bad("stop", "stop strings must not be empty"));
        }
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k: usize::try_from(top_k).unwrap_or(0),
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed: self.seed,
            max_tokens,
            min_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            eos_token_ids: d.eos_token_ids.clone(),
            n,
        })
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature < SAMPLING_EPS
    }
}

/// A small, seedable generator (SplitMix64): one per sequence, so a sequence's draws depend
/// only on its seed and its own history.
#[derive(Debug, Clone)]
pub struct SeqRng(u64);

impl SeqRng {
    pub fn new(seed: u64) -> SeqRng {
        SeqRng(seed)
    }

    /// The generator for sequence `index` of a request seeded with `seed`: `n` samples of a
    /// seeded request differ from each other but are each reproducible.
    pub fn for_sequence(seed: u64, index: usize) -> SeqRng {
        let mut r = SeqRng(seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Token counts of one sequence, kept up to date as it grows, for the penalties.
#[derive(Debug, Clone, Default)]
pub struct TokenCounts {
    /// Distinct prompt tokens (repetition penalty only).
    prompt: Vec<u32>,
    /// Occurrences of each output token.
    output: HashMap<u32, u32>,
    /// Output tokens so far.
    generated: usize,
}

impl TokenCounts {
    pub fn new(prompt: &[u32]) -> TokenCounts {
        let mut p = prompt.to_vec();
        p.sort_unstable();
        p.dedup();
        TokenCounts {
            prompt: p,
            output: HashMap::new(),
            generated: 0,
        }
    }

    pub fn push(&mut self, token: u32) {
        *self.output.entry(token).or_insert(0) += 1;
        self.generated += 1;
    }

    pub fn generated(&self) -> usize {
        self.generated
    }
}

/// Apply min_tokens masking and the penalties to `logits` in place.
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, counts: &TokenCounts) {
    if counts.generated < p.min_tokens {
        for &t in p.eos_token_ids.iter().chain(&p.stop_token_ids) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if p.repetition_penalty != 1.0 {
        let rp = p.repetition_penalty;
        let penalise = |l: &mut f32| *l = if *l > 0.0 { *l / rp } else { *l * rp };
        for &t in &counts.prompt {
            if let Some(l) = logits.get_mut(t as usize) {
                penalise(l);
            }
        }
        for &t in counts.output.keys() {
            if counts.prompt.binary_search(&t).is_err() {
                if let Some(l) = logits.get_mut(t as usize) {
                    penalise(l);
                }
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        for (&t, &c) in &counts.output {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// Index of the largest finite logit (the lowest index on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Choose the next token from one sequence's raw logits.
pub fn sample(
    mut logits: Vec<f32>,
    p: &SamplingParams,
    counts: &TokenCounts,
    rng: &mut SeqRng,
) -> u32 {
    apply_penalties(&mut logits, p, counts);
    if p.is_greedy() || p.top_k == 1 {
        return argmax(&logits);
    }
    // Softmax at temperature.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(&logits);
    }
    let inv_t = 1.0 / p.temperature;
    let mut probs: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    // min_p: drop tokens below min_p times the top probability (which is exp(0)/total).
    if p.min_p > 0.0 {
        let threshold = p.min_p / total;
        probs
            .iter_mut()
            .filter(|x| **x < threshold)
            .for_each(|x| *x = 0.0);
    }
    let candidates = nucleus(&probs, p.top_k, p.top_p);
    let mass: f64 = candidates.iter().map(|&i| probs[i] as f64).sum();
    let mut u = rng.next_f64() * mass;
    for &i in &candidates {
        u -= probs[i] as f64;
        if u < 0.0 {
            return i as u32;
        }
    }
    candidates
        .last()
        .map_or_else(|| argmax(&logits), |&i| i as u32)
}

/// The tokens top_k and top_p keep, likeliest first; all non-zero tokens when both are off.
/// top_p applies to the mass top_k left, renormalised, as vLLM's `apply_top_k_top_p`.
fn nucleus(probs: &[f32], top_k: usize, top_p: f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
    if top_k == 0 && top_p >= 1.0 {
        return idx;
    }
    let by_prob = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    if top_k > 0 && top_k < idx.len() {
        idx.select_nth_unstable_by(top_k, by_prob);
        idx.truncate(top_k);
    }
    let limit = top_p * idx.iter().map(|&i| probs[i]).sum::<f32>();
    if top_p < 1.0 && idx.len() > NUCLEUS_PREFILTER {
        idx.select_nth_unstable_by(NUCLEUS_PREFILTER, by_prob);
        let head_mass: f32 = idx[..NUCLEUS_PREFILTER].iter().map(|&i| probs[i]).sum();
        if head_mass >= limit {
            idx.truncate(NUCLEUS_PREFILTER);
        }
    }
    idx.sort_unstable_by(by_prob);
    if top_p < 1.0 {
        let mut cum = 0.0f32;
        let mut cut = idx.len();
        for (k, &i) in idx.iter().enumerate() {
            // Keep a token while the mass above it is below top_p (at least one token).
            if k > 0 && cum >= limit {
                cut = k;
                break;
            }
            cum += probs[i];
        }
        idx.truncate(cut);
    }
    idx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        RequestSampling::default()
            .resolve(&SamplingDefaults::default())
            .unwrap()
    }

    #[test]
    fn generation_config_defaults_apply_only_to_missing_fields() {
        let text = r#"{"eos_token_id":[642,640],"repetition_penalty":1.05,"temperature":0.1,"top_p":0.001,"top_k":1}"#;
        let gc = GenerationConfig::from_json_str(text, "generation_config.json").unwrap();
        let d = SamplingDefaults::from_generation_config(&gc, true);
        let req = RequestSampling {
            temperature: Some(0.7),
            ..Default::default()
        };
        let p = req.resolve(&d).unwrap();
        assert_eq!(p.temperature, 0.7);
        assert_eq!(p.top_k, 1);
        assert_eq!(p.top_p, 0.001);
        assert_eq!(p.repetition_penalty, 1.05);
        assert_eq!(p.eos_token_ids, vec![642, 640]);
        let off = SamplingDefaults::from_generation_config(&gc, false);
        let p = RequestSampling::default().resolve(&off).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k), (1.0, 1.0, 0));
        assert_eq!(p.eos_token_ids, vec![642, 640]);
    }

    #[test]
    fn bad_params_name_their_field() {
        let d = SamplingDefaults::default();
        let e = RequestSampling {
            top_p: Some(0.0),
            ..Default::default()
        }
        .resolve(&d)
        .unwrap_err();
        assert_eq!(e.param, "top_p");
        let e = RequestSampling {
            temperature: Some(-1.0),
            ..Default::default()
        }
        .resolve(&d)
        .unwrap_err();
        assert_eq!(e.param, "temperature");
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut p = params();
        p.repetition_penalty = 2.0;
        let counts = TokenCounts::new(&[0, 1]);
        let mut l = vec![4.0, -4.0, 4.0];
        apply_penalties(&mut l, &p, &counts);
        assert_eq!(l, vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn frequency_and_presence_count_output_only() {
        let mut p = params();
        p.frequency_penalty = 0.5;
        p.presence_penalty = 1.0;
        let mut counts = TokenCounts::new(&[2]);
        counts.push(0);
        counts.push(0);
        let mut l = vec![0.0, 0.0, 0.0];
        apply_penalties(&mut l, &p, &counts);
        assert_eq!(l, vec![-2.0, 0.0, 0.0]);
    }

    #[test]
    fn min_tokens_masks_eos() {
        let mut p = params();
        p.eos_token_ids = vec![1];
        p.min_tokens = 1;
        p.temperature = 0.0;
        let counts = TokenCounts::new(&[]);
        let mut rng = SeqRng::new(0);
        assert_eq!(sample(vec![0.0, 9.0, 1.0], &p, &counts, &mut rng), 2);
    }

    #[test]
    fn greedy_and_top_k_one_are_argmax() {
        let mut p = params();
        p.temperature = 0.0;
        let counts = TokenCounts::new(&[]);
        let mut rng = SeqRng::new(0);
        assert_eq!(sample(vec![0.0, 3.0, 1.0], &p, &counts, &mut rng), 1);
        p.temperature = 1.0;
        p.top_k = 1;
        assert_eq!(sample(vec![0.0, 3.0, 1.0], &p, &counts, &mut rng), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        assert_eq!(nucleus(&probs, 0, 0.5), vec![0]);
        assert_eq!(nucleus(&probs, 0, 0.7), vec![0, 1]);
        assert_eq!(nucleus(&probs, 0, 0.001), vec![0]);
        assert_eq!(nucleus(&probs, 2, 1.0), vec![0, 1]);
        assert_eq!(nucleus(&probs, 0, 1.0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut p = params();
        p.min_p = 0.5;
        let counts = TokenCounts::new(&[]);
        let mut rng = SeqRng::new(7);
        for _ in 0..200 {
            let t = sample(vec![5.0, 4.9, 0.0, -3.0], &p, &counts, &mut rng);
            assert!(t < 2);
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let p = params();
        let counts = TokenCounts::new(&[]);
        let logits = vec![0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let draw = |seed| {
            let mut rng = SeqRng::for_sequence(seed, 0);
            (0..4000)
                .map(|_| sample(logits.clone(), &p, &counts, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42));
        assert_ne!(a, draw(43));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        assert!(!a.contains(&2));
    }

    #[test]
    fn large_vocab_top_p_matches_full_sort() {
        let mut rng = SeqRng::new(3);
        let probs: Vec<f32> = (0..5000).map(|_| rng.next_f64() as f32).collect();
        let total: f32 = probs.iter().sum();
        let probs: Vec<f32> = probs.iter().map(|p| p / total).collect();
        let got = nucleus(&probs, 0, 0.9);
        let mut all: Vec<usize> = (0..probs.len()).collect();
        all.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
        assert_eq!(got[..], all[..got.len()]);
        assert!(got.len() > NUCLEUS_PREFILTER);
    }
}
