//! What the engine tells a request's reader: one [`Event::Token`] per generated token of each
//! of the `n` sequences, then each sequence's [`Event::Finished`] with its [`FinishReason`],
//! [`StopReason`] and [`Usage`]; or a single [`Event::Error`].
//!
//! This is the engine's output vocabulary, shared by the scheduler (`scheduler.rs`, which
//! produces events), the metrics (`metrics.rs`, which count finish reasons) and the handle
//! (`engine.rs`, whose [`Generation`](crate::Generation) carries the receiving end). It
//! imports nothing from the rest of the crate.

/// Why a sequence ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos token, a stop token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What stopped a sequence besides eos (vLLM's `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// Token counts of one sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The prompt, image pads included.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the engine tells a request's reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A token of sequence `index`; `text` is what it adds to the output (possibly empty:
    /// held back as an incomplete character or the possible start of a stop string).
    Token {
        index: usize,
        text: String,
        token_id: u32,
    },
    /// Sequence `index` is done.
    Finished {
        index: usize,
        reason: FinishReason,
        stop_reason: Option<StopReason>,
        usage: Usage,
    },
    /// The request failed inside the engine; nothing more follows.
    Error(String),
}
