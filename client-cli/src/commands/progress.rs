//! How `easel generate` shows a job's progress on stderr.
//!
//! - [`Display::Bar`]: on a terminal, an indicatif spinner while queued/loading, then a bar
//!   per batch of images with step/total, steps/s and ETA (computed from the daemon's own step
//!   times). The daemon reports every image of a batch at every step; the bar names the range.
//! - [`Display::Lines`]: stderr is not a terminal: plain lines such as `step 3/20 (0.4 s)`.
//! - [`Display::Quiet`]: `--no-progress` or `--json`: nothing.
//!
//! Everything goes to stderr; stdout carries only the written paths (or JSON events).

use std::io::IsTerminal;
use std::time::Duration;

use easel_client::pb;
use indicatif::{ProgressBar, ProgressStyle};

pub enum Display {
    Bar {
        bar: ProgressBar,
        count: u32,
        batch: Option<Batch>,
    },
    Lines {
        count: u32,
    },
    Quiet,
}

impl Display {
    /// Picks the display for this run: `quiet` for `--no-progress`/`--json`.
    pub fn new(quiet: bool, count: u32) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(spinner_style());
            bar.set_message("sending the request");
            bar.enable_steady_tick(Duration::from_millis(100));
            Display::Bar {
                bar,
                count,
                batch: None,
            }
        } else {
            Display::Lines { count }
        }
    }

    pub fn queued(&mut self, job_id: &str, position: u32) {
        let text = if position == 0 {
            format!("job {job_id} is starting")
        } else {
            format!("job {job_id} is queued behind {position} other job{}", plural(position))
        };
        match self {
            Display::Bar { bar, .. } => bar.set_message(text),
            Display::Lines { .. } => eprintln!("{text}"),
            Display::Quiet => {}
        }
    }

    pub fn started(&mut self, load_ms: u64) {
        let loaded = (load_ms > 0).then(|| format!("loaded the model in {}", seconds(load_ms)));
        match self {
            Display::Bar { bar, .. } => {
                if let Some(loaded) = loaded {
                    bar.println(loaded);
                }
                bar.set_message("encoding the prompt");
            }
            Display::Lines { .. } => {
                if let Some(loaded) = loaded {
                    eprintln!("{loaded}");
                }
            }
            Display::Quiet => {}
        }
    }

    pub fn progress(&mut self, progress: &pb::Progress) {
        match self {
            Display::Bar { bar, count, batch } => {
                let before = *batch;
                let now = Batch::follow(before, progress);
                *batch = Some(now);
                if before.is_none_or(|b| b.first != now.first) {
                    bar.set_style(bar_style());
                    bar.set_length(u64::from(progress.total));
                }
                if before != Some(now) {
                    bar.set_prefix(now.prefix(*count));
                }
                bar.set_position(u64::from(progress.step));
                bar.set_message(rate_and_eta(progress));
            }
            Display::Lines { count } => eprintln!("{}", step_line(progress, *count)),
            Display::Quiet => {}
        }
    }

    /// Runs `f` (which prints to stdout) without tearing the bar.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Display::Bar { bar, .. } => bar.suspend(f),
            _ => f(),
        }
    }

    pub fn finished(&mut self, timings: Option<&pb::Timings>, images: usize) {
        let total = timings.map(|t| t.total_ms).unwrap_or_default();
        let text = format!(
            "generated {images} image{} in {}",
            plural(images as u32),
            seconds(total)
        );
        match self {
            Display::Bar { bar, .. } => {
                bar.finish_and_clear();
                eprintln!("{text}");
            }
            Display::Lines { .. } => eprintln!("{text}"),
            Display::Quiet => {}
        }
    }

    /// Clears the bar after an error or Ctrl-C.
    pub fn abandon(&mut self) {
        if let Display::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}[{bar:30}] {pos}/{len} steps  {msg}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The images one bar follows: a batch the daemon denoises together (first..=last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    first: u32,
    last: u32,
    step: u32,
}

impl Batch {
    /// The batch after `progress`: the same one grows while steps go on; a step number that
    /// goes back, or an image before the batch, starts the next batch.
    fn follow(current: Option<Batch>, progress: &pb::Progress) -> Batch {
        let index = progress.image_index;
        match current {
            Some(b) if progress.step >= b.step && index >= b.first => Batch {
                first: b.first,
                last: b.last.max(index),
                step: progress.step,
            },
            _ => Batch {
                first: index,
                last: index,
                step: progress.step,
            },
        }
    }

    fn prefix(self, count: u32) -> String {
        if count <= 1 {
            String::new()
        } else if self.first == self.last {
            format!("image {}/{count} ", self.first + 1)
        } else {
            format!("images {}–{}/{count} ", self.first + 1, self.last + 1)
        }
    }
}

/// `3.2 steps/s, ETA 5 s` from the daemon's step times (empty before they mean anything).
fn rate_and_eta(progress: &pb::Progress) -> String {
    if progress.step == 0 || progress.elapsed_ms == 0 {
        return String::new();
    }
    let per_step_ms = progress.elapsed_ms as f64 / f64::from(progress.step);
    let rate = 1000.0 / per_step_ms;
    let left_ms = per_step_ms * f64::from(progress.total.saturating_sub(progress.step));
    format!("{rate:.2} steps/s, ETA {}", seconds(left_ms.round() as u64))
}

/// `step 3/20 (0.4 s)`, prefixed with `image 2/4: ` when there are several images.
fn step_line(progress: &pb::Progress, count: u32) -> String {
    let prefix = if count > 1 {
        format!("image {}/{count}: ", progress.image_index + 1)
    } else {
        String::new()
    };
    format!(
        "{prefix}step {}/{} ({})",
        progress.step,
        progress.total,
        seconds(progress.elapsed_ms)
    )
}

/// `0.4 s`, `12.0 s`, `2 min 5 s`.
fn seconds(ms: u64) -> String {
    if ms >= 60_000 {
        let s = ms / 1000;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(step: u32, total: u32, elapsed_ms: u64, image_index: u32) -> pb::Progress {
        pb::Progress {
            step,
            total,
            elapsed_ms,
            image_index,
            ..Default::default()
        }
    }

    #[test]
    fn plain_lines() {
        assert_eq!(step_line(&progress(3, 20, 400, 0), 1), "step 3/20 (0.4 s)");
        assert_eq!(step_line(&progress(1, 4, 1250, 1), 2), "image 2/2: step 1/4 (1.2 s)");
    }

    #[test]
    fn rate_and_eta_come_from_daemon_times() {
        assert_eq!(rate_and_eta(&progress(4, 20, 2000, 0)), "2.00 steps/s, ETA 8.0 s");
        assert_eq!(rate_and_eta(&progress(0, 20, 0, 0)), "");
        assert_eq!(rate_and_eta(&progress(20, 20, 5000, 0)), "4.00 steps/s, ETA 0.0 s");
    }

    #[test]
    fn the_bar_follows_batches() {
        let mut batch = None;
        let mut prefixes = Vec::new();
        // Two batches of two images, two steps each: the daemon reports each image each step.
        for (step, image) in [(1, 0), (1, 1), (2, 0), (2, 1), (1, 2), (1, 3), (2, 2), (2, 3)] {
            let now = Batch::follow(batch, &progress(step, 2, 10, image));
            batch = Some(now);
            prefixes.push(now.prefix(4));
        }
        assert_eq!(
            prefixes,
            [
                "image 1/4 ",
                "images 1–2/4 ",
                "images 1–2/4 ",
                "images 1–2/4 ",
                "image 3/4 ",
                "images 3–4/4 ",
                "images 3–4/4 ",
                "images 3–4/4 "
            ]
        );
        // One image at a time (batches of one) and a single image.
        let one = Batch::follow(Some(Batch::follow(None, &progress(2, 2, 1, 0))), &progress(1, 2, 1, 1));
        assert_eq!(one.prefix(2), "image 2/2 ");
        assert_eq!(one.prefix(1), "");
    }

    #[test]
    fn durations() {
        assert_eq!(seconds(0), "0.0 s");
        assert_eq!(seconds(59_949), "59.9 s");
        assert_eq!(seconds(125_000), "2 min 5 s");
    }

    #[test]
    fn quiet_display_prints_nothing_and_never_panics() {
        let mut display = Display::Quiet;
        display.queued("j", 0);
        display.started(10);
        display.progress(&progress(1, 2, 3, 0));
        assert_eq!(display.suspend(|| 5), 5);
        display.finished(None, 1);
        display.abandon();
    }
}
