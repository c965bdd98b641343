//! The seam between the scheduler and the model: what one engine step asks of a model.
//!
//! The scheduler owns sequences and decides who runs in a step; the model owns weights and
//! computes. A sequence's KV cache lives in its `State`, owned by the scheduler, so a finished
//! or cancelled sequence frees its cache by being dropped.

use anyhow::Result;

/// One image, ready for the vision tower.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// (grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch), row-major f32.
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid_thw: [usize; 3],
}

impl ProcessedImage {
    /// Tokens this image occupies in the prompt after the 2x2 merge.
    pub fn tokens(&self, spatial_merge_size: usize) -> usize {
        self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]
            / (spatial_merge_size * spatial_merge_size)
    }
}

/// A prompt ready for prefill: token ids with every image's pads already expanded, and the
/// images in the order their pads appear.
#[derive(Debug, Clone)]
pub struct PromptInput {
    pub input_ids: Vec<u32>,
    pub images: Vec<ProcessedImage>,
}

/// What the scheduler needs from a model.
pub trait StepModel: Send + 'static {
    /// A sequence's model state: its KV cache and M-RoPE position offset.
    type State: Send;

    /// Run the vision tower and the prompt; return the state and the logits (f32, vocab) of
    /// the last prompt position.
    fn prefill(&mut self, prompt: &PromptInput) -> Result<(Self::State, Vec<f32>)>;

    /// One decode step for several sequences at once: append `tokens[i]` to `states[i]` and
    /// return each sequence's next-token logits, in order.
    fn decode(&mut self, states: &mut [&mut Self::State], tokens: &[u32]) -> Result<Vec<Vec<f32>>>;

    /// Tokens held in this state's KV cache.
    fn cached_tokens(state: &Self::State) -> usize;
}
