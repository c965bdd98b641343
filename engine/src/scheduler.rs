//! Continuous batching: the engine's own OS thread, which owns the model and every sequence.
//!
//! Requests arrive on a channel from [`crate::Engine`] and wait in FIFO order.
//! At each step boundary the scheduler drops cancelled requests (their client hung up: the
//! sequence's `State`, and so its KV cache, is freed at once), admits waiting requests while
//! they fit `max_sequences`, the KV cache (each sequence reserves prompt + max_tokens, so a
//! running sequence never has to be preempted) and the step's token budget, prefills them,
//! then runs one batched [`StepModel::decode`] for every running sequence. Each new token is
//! sampled (`sampling.rs`), detokenized incrementally (`detokenize.rs`: text held back while it
//! may be an incomplete UTF-8 character or the start of a stop string), checked against the stop
//! conditions, and sent to its request's bounded channel with `try_send`: a slow client
//! never stalls the step (events wait in the request's outbox), a gone client cancels.

use crate::backend::{PromptInput, StepModel};
use crate::detokenize::IncrementalText;
use crate::event::{Event, FinishReason, StopReason, Usage};
use crate::metrics::EngineMetrics;
use crate::sampling::{sample, SamplingParams, SeqRng, TokenCounts};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

/// How long an idle scheduler sleeps between retries of a full client channel.
const OUTBOX_RETRY: Duration = Duration::from_millis(2);

/// Limits of one engine.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most sequences in one decode step.
    pub max_sequences: usize,
    /// Most tokens (prompt tokens of new sequences plus one per running sequence) in a step;
    /// a single prompt larger than this still runs, alone.
    pub step_token_budget: usize,
    /// Tokens the KV cache holds over all sequences.
    pub kv_cache_tokens: usize,
}

/// One request, resolved and tokenized, on its way to the scheduler.
pub struct Submission {
    pub prompt: PromptInput,
    /// `max_tokens` is set (the engine fills in the room left when the client gave none).
    pub params: SamplingParams,
    /// The request's events; bounded, and never waited on by the scheduler.
    pub events: Sender<Event>,
    pub arrived: Instant,
}

impl Submission {
    fn max_tokens(&self) -> usize {
        self.params.max_tokens.unwrap_or(1)
    }

    /// KV-cache tokens the request reserves: every sequence at full length.
    pub fn kv_reservation(&self) -> usize {
        (self.prompt.input_ids.len() + self.max_tokens()) * self.params.n
    }
}

/// A request being served: its channel, the events not yet accepted by it, its timings.
struct Request {
    events: Sender<Event>,
    /// Events the channel had no room for. Unbounded in type, bounded in fact: a request
    /// produces at most `(max_tokens + 1) x n` events.
    outbox: VecDeque<Event>,
    params: Arc<SamplingParams>,
    prompt_tokens: usize,
    arrived: Instant,
    first_token: Option<Instant>,
    live: usize,
    cancelled: bool,
}

/// One running sequence.
struct Seq<S> {
    req: u64,
    index: usize,
    state: S,
    /// The token sampled last, fed to the next decode step.
    last: u32,
    counts: TokenCounts,
    rng: SeqRng,
    text: IncrementalText,
    last_token_at: Instant,
    reserve: usize,
}

/// The scheduler: built and run on its own thread by [`crate::Engine::start`].
pub struct Scheduler<M: StepModel> {
    model: M,
    cfg: SchedulerConfig,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<EngineMetrics>,
    /// New requests from every handle; when all handles are gone the scheduler finishes its
    /// work and returns.
    rx: Receiver<Submission>,
    waiting: VecDeque<(u64, Submission)>,
    running: Vec<Seq<M::State>>,
    requests: HashMap<u64, Request>,
    reserved: usize,
    next_id: u64,
    seed_base: u64,
}

impl<M: StepModel> Scheduler<M> {
    pub fn new(
        model: M,
        cfg: SchedulerConfig,
        tokenizer: Arc<Tokenizer>,
        metrics: Arc<EngineMetrics>,
        rx: Receiver<Submission>,
    ) -> Self {
        let seed_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Scheduler {
            model,
            cfg,
            tokenizer,
            metrics,
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            requests: HashMap::new(),
            reserved: 0,
            next_id: 0,
            seed_base,
        }
    }

    /// Serve until every handle is dropped and all work is done.
    pub fn run(mut self) {
        let mut open = true;
        loop {
            open = self.receive(open);
            self.step();
            let pending = self.requests.values().any(|r| !r.outbox.is_empty());
            if !open && self.running.is_empty() && self.waiting.is_empty() {
                if !pending {
                    break;
                }
                std::thread::sleep(OUTBOX_RETRY);
            }
        }
        tracing::debug!("engine scheduler stopped");
    }

    /// Take new submissions; block only when there is nothing else to do.
    fn receive(&mut self, open: bool) -> bool {
        if !open {
            return false;
        }
        let idle = self.running.is_empty() && self.waiting.is_empty();
        let pending = self.requests.values().any(|r| !r.outbox.is_empty());
        if idle {
            let first = if pending {
                self.rx.recv_timeout(OUTBOX_RETRY)
            } else {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match first {
                Ok(s) => self.enqueue(s),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(s) => self.enqueue(s),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn enqueue(&mut self, s: Submission) {
        self.next_id += 1;
        self.waiting.push_back((self.next_id, s));
    }

    /// One step: flush, drop the cancelled, admit and prefill, decode.
    pub fn step(&mut self) {
        self.flush();
        self.drop_cancelled();
        self.admit();
        self.decode();
        self.flush();
        self.metrics.running.set(self.running.len() as f64);
        self.metrics.waiting.set(self.waiting.len() as f64);
        let usage = self.reserved as f64 / self.cfg.kv_cache_tokens.max(1) as f64;
        self.metrics.kv_usage.set(usage);
    }

    /// Offer each request's outbox to its channel, without waiting.
    fn flush(&mut self) {
        for r in self.requests.values_mut() {
            while let Some(ev) = r.outbox.pop_front() {
                match r.events.try_send(ev) {
                    Ok(()) => {}
                    Err(TrySendError::Full(ev)) => {
                        r.outbox.push_front(ev);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        r.cancelled = true;
                        r.outbox.clear();
                    }
                }
            }
            if r.events.is_closed() {
                r.cancelled = true;
                r.outbox.clear();
            }
        }
        self.requests
            .retain(|_, r| !(r.live == 0 && (r.outbox.is_empty() || r.cancelled)));
    }

    fn drop_cancelled(&mut self) {
        let requests = &self.requests;
        let mut freed = 0;
        self.running.retain(|s| {
            let keep = requests.get(&s.req).is_some_and(|r| !r.cancelled);
            if !keep {
                freed += s.reserve;
            }
            keep
        });
        self.reserved -= freed;
        self.requests.retain(|_, r| !r.cancelled);
        self.waiting.retain(|(_, s)| !s.events.is_closed());
    }

    /// Admit waiting requests, in order, while they fit; prefill each of their sequences.
    fn admit(&mut self) {
        let mut budget = self
            .cfg
            .step_token_budget
            .saturating_sub(self.running.len());
        let mut admitted_any = false;
        while let Some((_, next)) = self.waiting.front() {
            let n = next.params.n;
            let cost = next.prompt.input_ids.len() * n;
            let kv = next.kv_reservation();
            let seqs_fit = self.running.len() + n <= self.cfg.max_sequences.max(n);
            let kv_fits = self.reserved + kv <= self.cfg.kv_cache_tokens || self.running.is_empty();
            let budget_fits = cost <= budget || (!admitted_any && self.running.is_empty());
            if !(seqs_fit && kv_fits && budget_fits) {
                break;
            }
            let Some((id, sub)) = self.waiting.pop_front() else {
                break;
            };
            budget = budget.saturating_sub(cost);
            admitted_any = true;
            self.prefill(id, sub);
        }
    }

    fn prefill(&mut self, id: u64, sub: Submission) {
        let params = Arc::new(sub.params);
        let prompt_tokens = sub.prompt.input_ids.len();
        let mut req = Request {
            events: sub.events,
            outbox: VecDeque::new(),
            params: params.clone(),
            prompt_tokens,
            arrived: sub.arrived,
            first_token: None,
            live: 0,
            cancelled: false,
        };
        self.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
        let reserve = prompt_tokens + params.max_tokens.unwrap_or(1);
        let mut firsts = Vec::with_capacity(params.n);
        for index in 0..params.n {
            match self.model.prefill(&sub.prompt) {
                Ok((state, logits)) => {
                    let seed = params.seed.unwrap_or(self.seed_base ^ id);
                    let seq = Seq {
                        req: id,
                        index,
                        state,
                        last: 0,
                        counts: TokenCounts::new(&sub.prompt.input_ids),
                        rng: SeqRng::for_sequence(seed, index),
                        text: IncrementalText::new(params.stop.clone()),
                        last_token_at: Instant::now(),
                        reserve,
                    };
                    firsts.push((seq, logits));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prefill failed");
                    req.outbox
                        .push_back(Event::Error(format!("prefill failed: {e}")));
                    self.requests.insert(id, req);
                    return;
                }
            }
        }
        req.live = params.n;
        self.requests.insert(id, req);
        self.reserved += reserve * params.n;
        for (mut seq, logits) in firsts {
            if self.advance(&mut seq, logits) {
                self.running.push(seq);
            } else {
                self.reserved -= seq.reserve;
            }
        }
    }

    /// One batched decode step for every running sequence.
    fn decode(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let tokens: Vec<u32> = self.running.iter().map(|s| s.last).collect();
        let result = {
            let mut states: Vec<&mut M::State> =
                self.running.iter_mut().map(|s| &mut s.state).collect();
            self.model.decode(&mut states, &tokens)
        };
        let logits = match result {
            Ok(l) if l.len() == tokens.len() => l,
            Ok(l) => {
                let n = l.len();
                return self.fail_running(format!("decode gave {n} rows for {}", tokens.len()));
            }
            Err(e) => return self.fail_running(format!("decode failed: {e}")),
        };
        let running = std::mem::take(&mut self.running);
        for (mut seq, l) in running.into_iter().zip(logits) {
            if self.advance(&mut seq, l) {
                self.running.push(seq);
            } else {
                self.reserved -= seq.reserve;
            }
        }
    }

    /// A failed step fails every running request.
    fn fail_running(&mut self, message: String) {
        tracing::error!(error = %message, "engine step failed");
        for seq in self.running.drain(..) {
            if let Some(r) = self.requests.get_mut(&seq.req) {
                if r.live > 0 {
                    r.outbox.push_back(Event::Error(message.clone()));
                }
                r.live = 0;
            }
        }
        self.reserved = 0;
    }

    /// Sample a sequence's next token, emit it; false when the sequence has finished.
    fn advance(&mut self, seq: &mut Seq<M::State>, logits: Vec<f32>) -> bool {
        let Some(req) = self.requests.get_mut(&seq.req) else {
            return false;
        };
        if req.cancelled {
            return false;
        }
        let p = &req.params;
        let token = sample(logits, p, &seq.counts, &mut seq.rng);
        seq.counts.push(token);
        seq.last = token;
        let now = Instant::now();
        match req.first_token {
            None => {
                req.first_token = Some(now);
                self.metrics.ttft.observe((now - req.arrived).as_secs_f64());
            }
            Some(_) if seq.counts.generated() > 1 => {
                self.metrics
                    .tpot
                    .observe((now - seq.last_token_at).as_secs_f64());
            }
            Some(_) => {}
        }
        seq.last_token_at = now;
        self.metrics.generation_tokens.inc();

        let mut finish = None;
        let text;
        if p.eos_token_ids.contains(&token) {
            finish = Some((FinishReason::Stop, None));
            text = seq.text.finish();
        } else if p.stop_token_ids.contains(&token) {
            finish = Some((FinishReason::Stop, Some(StopReason::Token(token))));
            text = seq.text.finish();
        } else {
            let stopped = seq.text.push(&self.tokenizer, token);
            if let Some(s) = stopped {
                finish = Some((FinishReason::Stop, Some(StopReason::Text(s))));
                text = seq.text.finish();
            } else if seq.counts.generated() >= p.max_tokens.unwrap_or(usize::MAX) {
                finish = Some((FinishReason::Length, None));
                text = seq.text.finish();
            } else {
                text = seq.text.ready();
            }
        }
        req.outbox.push_back(Event::Token {
            index: seq.index,
            text,
            token_id: token,
        });
        let Some((reason, stop_reason)) = finish else {
            return true;
        };
        let usage = Usage {
            prompt_tokens: req.prompt_tokens,
            completion_tokens: seq.counts.generated(),
        };
        req.outbox.push_back(Event::Finished {
            index: seq.index,
            reason,
            stop_reason,
            usage,
        });
        req.live = req.live.saturating_sub(1);
        if req.live == 0 {
            self.metrics.finished(reason, req.arrived.elapsed());
        }
        false
    }
}
