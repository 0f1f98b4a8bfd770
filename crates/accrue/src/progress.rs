//! Progress for long work: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::cell::Cell;

/// What a bar counts, so every figure it shows has a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Events,
    Invoices,
    /// Bytes of an input file, shown as KiB/MiB/GiB.
    Bytes,
}

impl Unit {
    fn template(self) -> &'static str {
        match self {
            Unit::Events => "{msg:>8} [{bar:40}] {human_pos}/{human_len} events ({per_sec}, {eta})",
            Unit::Invoices => {
                "{msg:>8} [{bar:40}] {human_pos}/{human_len} invoices ({per_sec}, {eta})"
            }
            Unit::Bytes => "{msg:>8} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        }
    }

    /// `pos/total` with the unit, for the plain lines off a terminal.
    fn show(self, pos: u64, total: u64) -> String {
        match self {
            Unit::Events => format!("{pos}/{total} events"),
            Unit::Invoices => format!("{pos}/{total} invoices"),
            Unit::Bytes => format!("{}/{}", HumanBytes(pos), HumanBytes(total)),
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    unit: Unit,
    total: u64,
    last_line: Cell<Instant>,
}

impl Progress {
    /// A bar over `total` events.
    pub fn new(label: &'static str, total: u64) -> Progress {
        Progress::with_unit(label, total, Unit::Events)
    }

    pub fn with_unit(label: &'static str, total: u64, unit: Unit) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(unit.template())
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(label);
            b
        });
        Progress {
            bar,
            label,
            unit,
            total,
            last_line: Cell::new(Instant::now()),
        }
    }

    pub fn set(&self, pos: u64) {
        match &self.bar {
            Some(b) => b.set_position(pos),
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(2) {
                    eprintln!("{}: {}", self.label, self.unit.show(pos, self.total));
                    self.last_line.set(Instant::now());
                }
            }
        }
    }

    /// Ends the bar. No count here: each command prints its own summary
    /// (an export's events in range, not the positions scanned), so the
    /// output never shows two different counts of one thing.
    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!("{}: done", self.label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_has_its_unit() {
        assert_eq!(Unit::Events.show(5, 10), "5/10 events");
        assert_eq!(Unit::Invoices.show(1, 2), "1/2 invoices");
        assert_eq!(
            Unit::Bytes.show(1536, 10 * 1024 * 1024),
            "1.50 KiB/10.00 MiB"
        );
        for u in [Unit::Events, Unit::Invoices, Unit::Bytes] {
            assert!(ProgressStyle::with_template(u.template()).is_ok(), "{u:?}");
        }
    }
}
