//! Incremental detokenization: a sequence's token ids become text as they are generated, with
//! its stop strings.
//!
//! The scheduler (`scheduler.rs`) keeps one [`IncrementalText`] per sequence, pushes each new
//! token, and sends on what [`IncrementalText::ready`] gives: text is held back while it may
//! be an incomplete UTF-8 character or the start of a stop string, and cut where a stop string
//! begins. At the end of a sequence [`IncrementalText::finish`] hands out the rest
//! (an incomplete trailing character is dropped, as vLLM does).

use tokenizers::Tokenizer;

/// A sequence's output text, decoded incrementally, with its stop strings.
///
/// Ids are decoded in a window (`prefix..`), as text-generation-inference does: the text a
/// token adds is the decode of the window minus the decode of the window without it, so a
/// multi-byte character split over tokens appears once its last byte arrives.
#[derive(Debug, Default)]
pub struct IncrementalText {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    /// Text decoded so far, cut at a stop string once one is found.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop: Vec<String>,
}

impl IncrementalText {
    pub fn new(stop: Vec<String>) -> Self {
        IncrementalText {
            stop,
            ..Default::default()
        }
    }

    /// What the ids not yet read add to the window's text: the decode of `prefix..` minus the
    /// decode of `prefix..read`. `None` when the longer decode does not extend the shorter one
    /// at a character boundary.
    fn decode_window(&self, tok: &Tokenizer) -> Option<String> {
        let before = tok
            .decode(&self.ids[self.prefix..self.read], true)
            .unwrap_or_default();
        let mut after = tok
            .decode(&self.ids[self.prefix..], true)
            .unwrap_or_default();
        if !after.is_char_boundary(before.len()) {
            return None;
        }
        after.drain(..before.len());
        Some(after)
    }

    /// Add a token; `Some(stop string)` when the text now contains one (the text is cut there).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        // Text ending in U+FFFD is an incomplete character: wait for its next byte.
        let new = self
            .decode_window(tok)
            .filter(|new| !new.is_empty() && !new.ends_with('\u{FFFD}'))?;
        let search_from = self.text.len().saturating_sub(self.max_stop_len());
        self.text.push_str(&new);
        self.prefix = self.read;
        self.read = self.ids.len();
        self.find_stop(search_from)
    }

    fn max_stop_len(&self) -> usize {
        self.stop.iter().map(String::len).max().unwrap_or(0)
    }

    fn find_stop(&mut self, from: usize) -> Option<String> {
        let mut from = from;
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hay = &self.text[from..];
        let (pos, s) = self
            .stop
            .iter()
            .filter_map(|s| hay.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p)?;
        let s = s.clone();
        self.text.truncate(from + pos);
        self.emitted = self.emitted.min(self.text.len());
        Some(s)
    }

    /// Text that can be handed out now: all but a tail that could begin a stop string.
    pub fn ready(&mut self) -> String {
        let pending = &self.text[self.emitted..];
        let hold = self
            .stop
            .iter()
            .flat_map(|s| {
                (1..s.len().min(pending.len() + 1))
                    .rev()
                    .filter(|&k| s.is_char_boundary(k) && pending.ends_with(&s[..k]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Everything left, at the end of the sequence. Ids whose bytes never completed a
    /// character are dropped, not shown as U+FFFD: vLLM's detokenizer (tokenizers'
    /// `DecodeStream`) holds such ids back the same way and nothing flushes them at the end,
    /// so both give the same text for the same ids.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}
