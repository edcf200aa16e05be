//! What `sluice top` remembers between readings: the latest reading, the completion and
//! failure rates of the last minutes (taken from the counters' growth between
//! readings), and the last error, which the view shows in its status line while it
//! keeps the last good figures.

use std::collections::VecDeque;
use std::time::Instant;

use super::sample::Sample;

/// Rates kept: ten minutes at one reading a second.
pub const KEPT_RATES: usize = 600;

/// Completion and failure rates between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Jobs completed per second.
    pub completed: f64,
    /// Jobs that finished with a failure outcome per second.
    pub failed: f64,
}

/// The view's state: readings and errors as they come.
#[derive(Debug, Default)]
pub struct History {
    latest: Option<(Instant, Sample)>,
    rates: VecDeque<Rates>,
    error: Option<String>,
}

impl History {
    /// An empty history (no reading yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a reading taken at `at`: the rates since the previous one join the
    /// history (a counter that went down, after Redis lost its data, counts 0), and any
    /// error is cleared.
    pub fn record(&mut self, at: Instant, sample: Sample) {
        if let Some((then, previous)) = &self.latest {
            let seconds = at.saturating_duration_since(*then).as_secs_f64();
            if seconds > 0.0 {
                let per_second =
                    |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
                self.rates.push_back(Rates {
                    completed: per_second(sample.completed, previous.completed),
                    failed: per_second(sample.failed, previous.failed),
                });
                while self.rates.len() > KEPT_RATES {
                    self.rates.pop_front();
                }
            }
        }
        self.latest = Some((at, sample));
        self.error = None;
    }

    /// Records a failed reading: the view keeps the last figures and says what failed.
    pub fn record_error(&mut self, error: String) {
        self.error = Some(error);
    }

    /// The latest reading, if any.
    pub fn latest(&self) -> Option<&Sample> {
        self.latest.as_ref().map(|(_, s)| s)
    }

    /// The last error, while no reading has succeeded since.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The rates, oldest first.
    pub fn rates(&self) -> impl DoubleEndedIterator<Item = Rates> + ExactSizeIterator + '_ {
        self.rates.iter().copied()
    }

    /// The most recent rates, if two readings were taken.
    pub fn current(&self) -> Option<Rates> {
        self.rates.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(completed: u64, failed: u64) -> Sample {
        Sample {
            completed,
            failed,
            ..Sample::default()
        }
    }

    #[test]
    fn rates_come_from_counter_growth_and_never_go_negative() {
        let t0 = Instant::now();
        let mut h = History::new();
        h.record(t0, sample(10, 0));
        assert_eq!(h.current(), None);
        h.record(t0 + Duration::from_secs(2), sample(30, 4));
        assert_eq!(
            h.current(),
            Some(Rates {
                completed: 10.0,
                failed: 2.0
            })
        );
        // Redis lost its counters: no negative rate.
        h.record(t0 + Duration::from_secs(3), sample(0, 0));
        assert_eq!(h.current(), Some(Rates::default()));
        assert_eq!(h.rates().len(), 2);
    }

    #[test]
    fn an_error_keeps_the_figures_until_the_next_reading() {
        let t0 = Instant::now();
        let mut h = History::new();
        h.record(t0, sample(1, 0));
        h.record_error("connection refused".into());
        assert_eq!(h.error(), Some("connection refused"));
        assert_eq!(h.latest().map(|s| s.completed), Some(1));
        h.record(t0 + Duration::from_secs(1), sample(2, 0));
        assert_eq!(h.error(), None);
    }

    #[test]
    fn only_the_last_minutes_are_kept() {
        let t0 = Instant::now();
        let mut h = History::new();
        for i in 0..(KEPT_RATES as u64 + 50) {
            h.record(t0 + Duration::from_secs(i), sample(i, 0));
        }
        assert_eq!(h.rates().len(), KEPT_RATES);
    }
}
