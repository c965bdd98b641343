//! The engine's events, written as vLLM writes them: one `chat.completion` document, or typed
//! `chat.completion.chunk`s (a role chunk per choice, a chunk per token with text, the last with
//! `finish_reason`, the usage chunk, then the end). Chunks are built straight from the events:
//! no SSE text is written here, and nothing is parsed back (the relay frames them).
//!
//! The usage chunk is always produced; the relay hides it when the client did not ask for it,
//! as it does for an HTTP worker's.
//!
//! The body is a stream over the engine's event channel; dropping it (the client hung up)
//! drops the receiver, which cancels the request at the engine's next step.

use crate::api::chat::Usage;
use crate::worker::{Chunk, StreamEvent};
use bytes::Bytes;
use caprl_engine::{Event, FinishReason, Generation, StopReason};
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// What every chunk or document repeats.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn stop_reason(s: &Option<StopReason>) -> Value {
    match s {
        None => Value::Null,
        Some(StopReason::Token(t)) => json!(t),
        Some(StopReason::Text(s)) => json!(s),
    }
}

/// One choice's result, for the non-streamed answer.
#[derive(Debug, Default, Clone)]
struct Choice {
    text: String,
    finish: Option<(FinishReason, Option<StopReason>)>,
    completion_tokens: usize,
}

/// Read every event, then write one `chat.completion` document.
pub fn json_body(head: Head, mut g: Generation) -> BoxStream<'static, Result<Bytes, String>> {
    stream::once(async move {
        let mut choices = vec![Choice::default(); g.n];
        let mut done = 0;
        while done < g.n {
            match g.events.recv().await {
                Some(Event::Token { index, text, .. }) => {
                    if let Some(c) = choices.get_mut(index) {
                        c.text.push_str(&text);
                    }
                }
                Some(Event::Finished { index, reason, stop_reason, usage }) => {
                    if let Some(c) = choices.get_mut(index) {
                        c.finish = Some((reason, stop_reason));
                        c.completion_tokens = usage.completion_tokens;
                    }
                    done += 1;
                }
                Some(Event::Error(e)) => return Err(e),
                None => return Err("the engine stopped".to_string()),
            }
        }
        let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
        let choices: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let (reason, stop) = c.finish.unwrap_or((FinishReason::Length, None));
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": null, "annotations": null, "audio": null, "function_call": null, "tool_calls": [], "reasoning_content": null},
                    "logprobs": null,
                    "finish_reason": reason.as_str(),
                    "stop_reason": stop_reason(&stop),
                })
            })
            .collect();
        let doc = json!({
            "id": head.id, "object": "chat.completion", "created": head.created, "model": head.model,
            "choices": choices, "service_tier": null, "system_fingerprint": null,
            "usage": {"prompt_tokens": g.prompt_tokens, "total_tokens": g.prompt_tokens + completion, "completion_tokens": completion, "prompt_tokens_details": null},
            "prompt_logprobs": null, "kv_transfer_params": null,
        });
        Ok(Bytes::from(doc.to_string()))
    })
    .boxed()
}

/// Where a streamed answer is.
struct StreamState {
    head: Head,
    g: Generation,
    /// Chunks made but not yet handed out (the role chunks, one per choice).
    pending: VecDeque<StreamEvent>,
    /// An event read ahead (to merge a last token with its sequence's finish).
    ahead: Option<Event>,
    started: bool,
    finished: usize,
    completion: usize,
    ended: bool,
}

impl StreamState {
    fn chunk(&self, choices: Value, usage: Option<Usage>) -> StreamEvent {
        let has_choices = choices.as_array().is_some_and(|c| !c.is_empty());
        let mut c = json!({"id": self.head.id, "object": "chat.completion.chunk", "created": self.head.created, "model": self.head.model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = json!({"prompt_tokens": u.prompt_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens, "completion_tokens": u.completion_tokens});
        }
        StreamEvent::Chunk(Chunk {
            data: Bytes::from(c.to_string()),
            usage,
            has_choices,
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        match self.ahead.take() {
            Some(e) => Some(e),
            None => self.g.events.recv().await,
        }
    }

    /// The next stream item, or `None` after the end.
    async fn next(&mut self) -> Option<Result<StreamEvent, String>> {
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            for i in 0..self.g.n {
                let role = self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None);
                self.pending.push_back(role);
            }
            return self.pending.pop_front().map(Ok);
        }
        loop {
            if self.finished == self.g.n {
                self.ended = true;
                let usage = Usage {
                    prompt_tokens: self.g.prompt_tokens as u64,
                    completion_tokens: self.completion as u64,
                };
                self.pending.push_back(StreamEvent::Done);
                return Some(Ok(self.chunk(json!([]), Some(usage))));
            }
            match self.next_event().await {
                Some(Event::Token { index, text, .. }) => {
                    // A finish already waiting for this sequence rides on this token's chunk.
                    if let Ok(next) = self.g.events.try_recv() {
                        if let Event::Finished {
                            index: fi,
                            reason,
                            stop_reason: sr,
                            usage,
                        } = &next
                        {
                            if *fi == index {
                                self.finished += 1;
                                self.completion += usage.completion_tokens;
                                return Some(Ok(self.finish_chunk(index, &text, *reason, sr)));
                            }
                        }
                        self.ahead = Some(next);
                    }
                    if text.is_empty() {
                        continue;
                    }
                    return Some(Ok(self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]), None)));
                }
                Some(Event::Finished {
                    index,
                    reason,
                    stop_reason: sr,
                    usage,
                }) => {
                    self.finished += 1;
                    self.completion += usage.completion_tokens;
                    return Some(Ok(self.finish_chunk(index, "", reason, &sr)));
                }
                Some(Event::Error(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {
                    self.ended = true;
                    return Some(Err("the engine stopped".to_string()));
                }
            }
        }
    }

    fn finish_chunk(
        &self,
        index: usize,
        text: &str,
        reason: FinishReason,
        sr: &Option<StopReason>,
    ) -> StreamEvent {
        self.chunk(
            json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": reason.as_str(), "stop_reason": stop_reason(sr)}]),
            None,
        )
    }
}

/// The streamed answer: one typed chunk per engine event worth sending, then the end.
pub fn events(head: Head, g: Generation) -> BoxStream<'static, Result<StreamEvent, String>> {
    let state = StreamState {
        head,
        g,
        pending: VecDeque::new(),
        ahead: None,
        started: false,
        finished: 0,
        completion: 0,
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
    .boxed()
}
