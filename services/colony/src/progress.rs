//! Live progress for `colony goal watch|submit --wait` and `colony submit
//! --wait`: a bar on a terminal (indicatif), plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// A goal's progress: sub-tasks done of total, its state, its spend.
pub struct GoalProgress {
    bar: Option<ProgressBar>,
    last_view: Option<Instant>,
}

impl GoalProgress {
    /// A bar when stderr is a terminal, else nothing (the caller prints
    /// lines).
    pub fn new() -> GoalProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} sub-tasks · {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        GoalProgress {
            bar,
            last_view: None,
        }
    }

    /// Whether the bar is drawn (else the caller prints lines).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Whether a fresh view is worth fetching (at most twice a second).
    pub fn wants_view(&mut self) -> bool {
        if self.bar.is_none()
            || self
                .last_view
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return false;
        }
        self.last_view = Some(Instant::now());
        true
    }

    /// Show a goal view: done of total, state, spend.
    pub fn view(&self, v: &Value) {
        if let Some(bar) = &self.bar {
            let p = &v["progress"];
            bar.set_length(p["total"].as_u64().unwrap_or(0));
            bar.set_position(p["done"].as_u64().unwrap_or(0));
            bar.set_message(format!(
                "{} · {} running · {} in review · ${:.4}, {} tokens",
                v["state"].as_str().unwrap_or("?"),
                p["running"].as_u64().unwrap_or(0),
                p["review"].as_u64().unwrap_or(0),
                v["spent"]["cost_usd"].as_f64().unwrap_or(0.0),
                v["spent"]["tokens"].as_u64().unwrap_or(0),
            ));
        }
    }

    /// Print a line above the bar (or plainly without one).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A spinner for a task being waited for, on a terminal only.
pub fn task_spinner(id: &str) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_message(format!("task {id}: waiting for it to finish"));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    })
}
