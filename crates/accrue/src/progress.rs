//! Progress for long work: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use std::cell::Cell;

pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    total: u64,
    last_line: Cell<Instant>,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(label);
            b
        });
        Progress {
            bar,
            label,
            total,
            last_line: Cell::new(Instant::now()),
        }
    }

    pub fn set(&self, pos: u64) {
        match &self.bar {
            Some(b) => b.set_position(pos),
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(2) {
                    eprintln!("{}: {pos}/{}", self.label, self.total);
                    self.last_line.set(Instant::now());
                }
            }
        }
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!("{}: done ({} events)", self.label, self.total),
        }
    }
}
