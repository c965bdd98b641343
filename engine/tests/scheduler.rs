//! Continuous batching with a scripted model: the logits are a fixed function of the tokens a
//! sequence holds, so a sequence's output must not depend on who shares its steps.
#![allow(clippy::unwrap_used)]

use caprl_engine::backend::{ProcessedImage, PromptInput, StepModel};
use caprl_engine::detokenize::IncrementalText;
use caprl_engine::metrics::EngineMetrics;
use caprl_engine::prompt::PromptBuilder;
use caprl_engine::sampling::SamplingDefaults;
use caprl_engine::scheduler::SchedulerConfig;
use caprl_engine::{
    Engine, EngineConfig, Event, FinishReason, GenerateRequest, Generation, Message, Part,
    RequestSampling, StopReason, SubmitError, Usage,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const VOCAB: usize = 704;
const EOS: u32 = 642;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-qwen25vl-a")
}

/// What the fake model saw: batch sizes per decode step, live states.
#[derive(Default)]
struct Seen {
    batches: Mutex<Vec<usize>>,
    live: AtomicUsize,
}

struct FakeState {
    tokens: Vec<u32>,
    prompt_len: usize,
    seen: Arc<Seen>,
}

impl Drop for FakeState {
    fn drop(&mut self) {
        self.seen.live.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FakeModel {
    seen: Arc<Seen>,
    /// Emit eos once this many tokens were generated.
    eos_after: Option<usize>,
    step_delay: Duration,
}

impl FakeModel {
    fn logits(&self, s: &FakeState) -> Vec<f32> {
        let mut h: u64 = 1469598103934665603;
        for &t in s.tokens.iter().rev().take(4) {
            h = (h ^ t as u64).wrapping_mul(1099511628211);
        }
        let mut out: Vec<f32> = (0..VOCAB as u64)
            .map(|j| {
                let mut z = h ^ j.wrapping_mul(0x9E3779B97F4A7C15);
                z = (z ^ (z >> 31)).wrapping_mul(0xBF58476D1CE4E5B9);
                z ^= z >> 29;
                (z % 4000) as f32 / 1000.0
            })
            .collect();
        // Plain text tokens only, so the output is readable and stop strings testable.
        for (j, l) in out.iter_mut().enumerate() {
            if !(256..640).contains(&j) {
                *l = f32::NEG_INFINITY;
            }
        }
        if self.eos_after == Some(s.tokens.len() - s.prompt_len) {
            out[EOS as usize] = 100.0;
        }
        out
    }
}

impl StepModel for FakeModel {
    type State = FakeState;

    fn prefill(&mut self, prompt: &PromptInput) -> anyhow::Result<(FakeState, Vec<f32>)> {
        self.seen.live.fetch_add(1, Ordering::SeqCst);
        let s = FakeState {
            tokens: prompt.input_ids.clone(),
            prompt_len: prompt.input_ids.len(),
            seen: self.seen.clone(),
        };
        let l = self.logits(&s);
        Ok((s, l))
    }

    fn decode(
        &mut self,
        states: &mut [&mut FakeState],
        tokens: &[u32],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        self.seen.batches.lock().unwrap().push(states.len());
        std::thread::sleep(self.step_delay);
        Ok(states
            .iter_mut()
            .zip(tokens)
            .map(|(s, &t)| {
                s.tokens.push(t);
                self.logits(s)
            })
            .collect())
    }

    fn cached_tokens(s: &FakeState) -> usize {
        s.tokens.len()
    }
}

struct Setup {
    max_sequences: usize,
    eos_after: Option<usize>,
    step_delay: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            max_sequences: 8,
            eos_after: None,
            step_delay: Duration::ZERO,
        }
    }
}

fn start(setup: Setup) -> (Engine, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let model = FakeModel {
        seen: seen.clone(),
        eos_after: setup.eos_after,
        step_delay: setup.step_delay,
    };
    let prompts = PromptBuilder::from_model_dir(&model_dir(), 2).unwrap();
    let images = Arc::new(|_: &[u8]| {
        Ok::<_, anyhow::Error>(ProcessedImage {
            pixel_values: Vec::new(),
            grid_thw: [1, 4, 6],
        })
    });
    let defaults = SamplingDefaults {
        eos_token_ids: vec![EOS],
        ..SamplingDefaults::default()
    };
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_sequences: setup.max_sequences,
            step_token_budget: 512,
            kv_cache_tokens: 100_000,
        },
        max_model_len: 4096,
        defaults,
    };
    let metrics = Arc::new(EngineMetrics::new("test").unwrap());
    let h = Engine::start(model, prompts, images, cfg, metrics).unwrap();
    (h, seen)
}

fn request(
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    seed: Option<u64>,
) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::text("user", prompt)],
        images: Vec::new(),
        sampling: RequestSampling {
            temperature: Some(temperature),
            max_tokens: Some(max_tokens),
            seed,
            ..Default::default()
        },
    }
}

/// One sequence's result.
#[derive(Debug, Clone, PartialEq, Default)]
struct Out {
    ids: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    stop_reason: Option<StopReason>,
    usage: Usage,
}

fn collect(mut g: Generation) -> Vec<Out> {
    let mut outs = vec![Out::default(); g.n];
    let mut done = 0;
    while done < g.n {
        match g
            .events
            .blocking_recv()
            .expect("the engine ended the stream early")
        {
            Event::Token {
                index,
                text,
                token_id,
            } => {
                outs[index].ids.push(token_id);
                outs[index].text.push_str(&text);
            }
            Event::Finished {
                index,
                reason,
                stop_reason,
                usage,
            } => {
                outs[index].reason = Some(reason);
                outs[index].stop_reason = stop_reason;
                outs[index].usage = usage;
                done += 1;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    outs
}

fn run_one(h: &Engine, r: GenerateRequest) -> Out {
    collect(h.generate(r).unwrap()).remove(0)
}

fn four() -> Vec<GenerateRequest> {
    vec![
        request("a", 5, 0.0, None),
        request("a longer prompt about kites", 17, 0.0, None),
        request(
            "describe the picture in great detail please",
            9,
            1.0,
            Some(7),
        ),
        request("b", 30, 0.8, Some(99)),
    ]
}

#[test]
fn a_batch_gives_what_each_gives_alone() {
    let (h, seen) = start(Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    });
    let alone: Vec<Out> = four().into_iter().map(|r| run_one(&h, r)).collect();
    assert!(seen.batches.lock().unwrap().iter().all(|&b| b == 1));
    let gens: Vec<_> = four().into_iter().map(|r| h.generate(r).unwrap()).collect();
    let together: Vec<Out> = gens.into_iter().map(|g| collect(g).remove(0)).collect();
    assert_eq!(alone, together);
    assert_eq!(seen.batches.lock().unwrap().iter().max(), Some(&4));
    for (o, max) in together.iter().zip([5, 17, 9, 30]) {
        assert_eq!(o.reason, Some(FinishReason::Length));
        assert_eq!(o.usage.completion_tokens, max);
        assert_eq!(o.ids.len(), max);
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() {
    let (h, _) = start(Setup::default());
    let a = run_one(&h, request("x", 20, 1.0, Some(1)));
    let b = run_one(&h, request("x", 20, 1.0, Some(1)));
    let c = run_one(&h, request("x", 20, 1.0, Some(2)));
    assert_eq!(a.ids, b.ids);
    assert_ne!(a.ids, c.ids);
    let mut r = request("x", 20, 1.0, Some(1));
    r.sampling.n = Some(2);
    let two = collect(h.generate(r).unwrap());
    assert_ne!(two[0].ids, two[1].ids);
    assert_eq!(two[0].usage.prompt_tokens, a.usage.prompt_tokens);
}

#[test]
fn cancellation_frees_the_slot() {
    let (h, seen) = start(Setup {
        max_sequences: 1,
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    });
    let mut long = h.generate(request("long", 3000, 0.0, None)).unwrap();
    assert!(matches!(
        long.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    drop(long);
    // The only slot is free again: the next request runs to its end.
    let out = run_one(&h, request("short", 4, 0.0, None));
    assert_eq!(out.usage.completion_tokens, 4);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(seen.live.load(Ordering::SeqCst), 0);
}

#[test]
fn stop_strings_cut_the_text_and_max_tokens_holds() {
    let (h, _) = start(Setup::default());
    let full = run_one(&h, request("tell me", 40, 0.0, None));
    assert_eq!(full.reason, Some(FinishReason::Length));
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 20, "{:?}", full.text);
    // A stop string from the middle of the text.
    let stop: String = chars[10..13].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let mut r = request("tell me", 40, 0.0, None);
    r.sampling.stop = vec![stop.clone()];
    let out = run_one(&h, r);
    assert_eq!(out.text, full.text[..cut]);
    assert_eq!(out.reason, Some(FinishReason::Stop));
    assert_eq!(out.stop_reason, Some(StopReason::Text(stop)));
    assert!(out.usage.completion_tokens < 40);
    assert_eq!(out.ids[..], full.ids[..out.ids.len()]);
}

#[test]
fn eos_and_stop_tokens_end_a_sequence() {
    let (h, _) = start(Setup {
        eos_after: Some(3),
        ..Setup::default()
    });
    let out = run_one(&h, request("x", 50, 0.0, None));
    assert_eq!(out.reason, Some(FinishReason::Stop));
    assert_eq!(out.stop_reason, None);
    assert_eq!(out.usage.completion_tokens, 4);
    assert_eq!(*out.ids.last().unwrap(), EOS);
    let mut r = request("x", 50, 0.0, None);
    r.sampling.stop_token_ids = vec![out.ids[1]];
    let s = run_one(&h, r);
    assert_eq!(s.stop_reason, Some(StopReason::Token(out.ids[1])));
    assert_eq!(s.usage.completion_tokens, 2);
}

#[test]
fn sequences_join_and_leave_at_step_boundaries() {
    let (h, seen) = start(Setup {
        step_delay: Duration::from_millis(3),
        ..Setup::default()
    });
    let alone_b = run_one(&h, request("b", 5, 0.0, None));
    seen.batches.lock().unwrap().clear();
    let mut a = h.generate(request("a", 40, 0.0, None)).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            a.events.blocking_recv(),
            Some(Event::Token { .. })
        ));
    }
    let b = run_one(&h, request("b", 5, 0.0, None));
    assert_eq!(b, alone_b);
    let rest = collect(a);
    assert_eq!(rest[0].reason, Some(FinishReason::Length));
    let batches = seen.batches.lock().unwrap().clone();
    let first2 = batches.iter().position(|&b| b == 2).unwrap();
    let last2 = batches.iter().rposition(|&b| b == 2).unwrap();
    assert!(first2 > 0 && batches[..first2].iter().all(|&b| b == 1));
    assert!(batches[last2 + 1..].iter().all(|&b| b == 1) && last2 + 1 < batches.len());
}

#[test]
fn usage_counts_image_pads_and_bad_requests_are_refused() {
    let (h, _) = start(Setup::default());
    let text_only = run_one(&h, request("what is this", 3, 0.0, None));
    let mut r = request("what is this", 3, 0.0, None);
    r.messages = vec![Message::parts(
        "user",
        vec![Part::Image, Part::Text("what is this".into())],
    )];
    r.images = vec![bytes::Bytes::from_static(b"png")];
    let with_image = run_one(&h, r);
    // <|vision_start|> + 6 pads (grid 1x4x6 / 4) + <|vision_end|>.
    assert_eq!(
        with_image.usage.prompt_tokens,
        text_only.usage.prompt_tokens + 8
    );

    let err = h.generate(request("x", 5000, 0.0, None)).unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::Invalid {
                param: Some("max_tokens"),
                ..
            }
        ),
        "{err:?}"
    );
    let mut r = request("x", 5, 0.0, None);
    r.sampling.top_p = Some(2.0);
    assert!(matches!(
        h.generate(r),
        Err(SubmitError::Invalid {
            param: Some("top_p"),
            ..
        })
    ));
    let mut r = request("x", 5, 0.0, None);
    r.images = vec![bytes::Bytes::from_static(b"png")];
    assert!(h.generate(r).is_err());
}

#[test]
fn incremental_text_holds_back_partial_characters_and_stop_prefixes() {
    let prompts = PromptBuilder::from_model_dir(&model_dir(), 2).unwrap();
    let tok = prompts.tokenizer();
    let text = "héllo wörld 日本 done";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    let mut inc = IncrementalText::new(Vec::new());
    let mut out = String::new();
    for &id in &ids {
        assert!(inc.push(tok, id).is_none());
        let chunk = inc.ready();
        assert!(!chunk.contains('\u{FFFD}'), "{chunk:?}");
        out.push_str(&chunk);
    }
    out.push_str(&inc.finish());
    assert_eq!(out, text);

    let mut inc = IncrementalText::new(vec!["rld 日".into()]);
    let mut out = String::new();
    let mut stopped = None;
    for &id in &ids {
        if let Some(s) = inc.push(tok, id) {
            stopped = Some(s);
            break;
        }
        let chunk = inc.ready();
        out.push_str(&chunk);
        assert!(!out.contains("rld"), "held back: {out:?}");
    }
    out.push_str(&inc.finish());
    assert_eq!(stopped.as_deref(), Some("rld 日"));
    assert_eq!(out, "héllo wö");
}

#[test]
fn a_sequence_cut_inside_a_character_ends_without_it() {
    // As vLLM's detokenizer: the ids of an unfinished character are never shown, not even as
    // U+FFFD at the end.
    let prompts = PromptBuilder::from_model_dir(&model_dir(), 2).unwrap();
    let tok = prompts.tokenizer();
    let ids = tok.encode("ok 𝔘𝔘", false).unwrap().get_ids().to_vec();
    let cut = (1..ids.len())
        .find(|&n| tok.decode(&ids[..n], true).unwrap().ends_with('\u{FFFD}'))
        .expect("the byte-level tokenizer splits a 4-byte character over ids");
    let mut inc = IncrementalText::new(Vec::new());
    let mut out = String::new();
    for &id in &ids[..cut] {
        inc.push(tok, id);
        out.push_str(&inc.ready());
    }
    out.push_str(&inc.finish());
    let whole = tok.decode(&ids[..cut], true).unwrap();
    assert_eq!(out, whole.trim_end_matches('\u{FFFD}'));
    assert!(!out.contains('\u{FFFD}'), "{out:?}");
}
