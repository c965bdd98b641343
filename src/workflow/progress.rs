//! Progress of a workflow command on stderr: a bar (images/s, tokens/s, failures, elapsed) when
//! stderr is a terminal, else one plain line every [`PLAIN_EVERY`] (for logs and Kubernetes).

use indicatif::{ProgressBar, ProgressStyle};
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Counters shared by the command's stream and its loop (one task: `Cell`, no locks).
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    started: Instant,
    bar: Option<ProgressBar>,
    done: Cell<u64>,
    skipped: Cell<u64>,
    failed: Cell<u64>,
    tokens: Cell<u64>,
    last_line: Cell<Instant>,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .expect("a valid progress template; this is a bug"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            started: now,
            bar,
            done: Cell::new(0),
            skipped: Cell::new(0),
            failed: Cell::new(0),
            tokens: Cell::new(0),
            last_line: Cell::new(now),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Items skipped so far (done by an earlier run).
    pub fn skipped_count(&self) -> u64 {
        self.skipped.get()
    }

    pub fn skipped(&self, n: u64) {
        self.skipped.set(self.skipped.get() + n);
        self.update();
    }

    pub fn done(&self, tokens: u64) {
        self.done.set(self.done.get() + 1);
        self.tokens.set(self.tokens.get() + tokens);
        self.update();
    }

    pub fn failed(&self) {
        self.failed.set(self.failed.get() + 1);
        self.update();
    }

    fn message(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{}: {} done ({:.1}/s, {:.0} tokens/s), {} skipped, {} failed",
            self.what,
            self.done.get(),
            self.done.get() as f64 / secs,
            self.tokens.get() as f64 / secs,
            self.skipped.get(),
            self.failed.get()
        )
    }

    fn update(&self) {
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None => {
                if self.last_line.get().elapsed() >= PLAIN_EVERY {
                    self.last_line.set(Instant::now());
                    eprintln!("{}", self.message());
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
