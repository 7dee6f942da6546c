//! The last minutes of a sink's outcome counters, sampled on a fixed wall-clock grid, so a
//! console opened now can draw the rate of each outcome since before it was opened, and the
//! samples of several processes line up by time. No I/O.
//!
//! ```text
//!  at (unix s):   …  1200      1205      1210      1215
//!  indexed:       …   400       650       900       900     cumulative, per process
//!  rate:                   50/s      50/s       0/s         (next − previous) / 5 s
//! ```

use std::collections::VecDeque;

use serde_json::{Value, json};

/// Seconds between samples; samples fall on multiples of it.
pub const EVERY_SECONDS: i64 = 5;
/// Samples kept: ten minutes.
pub const KEPT: usize = 120;

/// One sample: the counters (in [`super::Outcome::ALL`] order) at a grid time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds, a multiple of [`EVERY_SECONDS`].
    pub at: i64,
    pub counts: [u64; 6],
}

#[derive(Debug, Default)]
pub struct Recent {
    samples: VecDeque<Sample>,
}

impl Recent {
    /// Records `counts` at `now` (unix seconds), on the grid point at or before it; a second
    /// sample of one grid point replaces the first.
    pub fn record(&mut self, now: i64, counts: [u64; 6]) {
        let at = now - now.rem_euclid(EVERY_SECONDS);
        if self.samples.back().is_some_and(|last| last.at >= at) {
            self.samples.pop_back();
        }
        self.samples.push_back(Sample { at, counts });
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// `[[at, c0, c1, …], …]`, oldest first: compact, for `/status`.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.samples
                .iter()
                .map(|s| {
                    let mut row = vec![json!(s.at)];
                    row.extend(s.counts.iter().map(|c| json!(c)));
                    Value::Array(row)
                })
                .collect(),
        )
    }
}

/// Reads [`Recent::to_json`] back; rows that do not parse are left out.
pub fn from_json(value: &Value) -> Vec<Sample> {
    let rows = value.as_array().map(Vec::as_slice).unwrap_or_default();
    rows.iter()
        .filter_map(|row| {
            let row = row.as_array()?;
            let at = row.first()?.as_i64()?;
            let mut counts = [0; 6];
            for (i, count) in counts.iter_mut().enumerate() {
                *count = row.get(i + 1)?.as_u64()?;
            }
            Some(Sample { at, counts })
        })
        .collect()
}

/// Per second, for each pair of consecutive samples: `(at of the later one, rates)`. A
/// counter that went down (the process restarted) counts as zero for that step.
pub fn rates(samples: &[Sample]) -> Vec<(i64, [f64; 6])> {
    samples
        .windows(2)
        .filter(|pair| pair[1].at > pair[0].at)
        .map(|pair| {
            #[allow(clippy::cast_precision_loss)] // seconds and counts, for a chart
            let seconds = (pair[1].at - pair[0].at) as f64;
            let mut rates = [0.0; 6];
            for (i, rate) in rates.iter_mut().enumerate() {
                #[allow(clippy::cast_precision_loss)]
                let delta = pair[1].counts[i].saturating_sub(pair[0].counts[i]) as f64;
                *rate = delta / seconds;
            }
            (pair[1].at, rates)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_on_the_grid_and_a_late_one_replaces_its_point() {
        let mut recent = Recent::default();
        recent.record(1_201, [1, 0, 0, 0, 0, 0]);
        recent.record(1_204, [3, 0, 0, 0, 0, 0]);
        recent.record(1_206, [8, 0, 0, 0, 0, 0]);
        let samples = from_json(&recent.to_json());
        assert_eq!(
            samples,
            [
                Sample {
                    at: 1_200,
                    counts: [3, 0, 0, 0, 0, 0]
                },
                Sample {
                    at: 1_205,
                    counts: [8, 0, 0, 0, 0, 0]
                },
            ]
        );
        assert_eq!(rates(&samples), [(1_205, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0])]);
    }

    #[test]
    fn only_the_last_minutes_are_kept_and_a_restart_is_no_negative_rate() {
        let mut recent = Recent::default();
        for i in 0..(KEPT as i64 + 10) {
            recent.record(i * EVERY_SECONDS, [u64::try_from(i).unwrap_or(0); 6]);
        }
        let samples = from_json(&recent.to_json());
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0].at, 10 * EVERY_SECONDS);
        let restarted = [
            Sample {
                at: 0,
                counts: [100; 6],
            },
            Sample {
                at: 5,
                counts: [10; 6],
            },
        ];
        assert_eq!(rates(&restarted)[0].1, [0.0; 6]);
    }
}
