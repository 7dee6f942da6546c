//! When the rebuild may block the old index, and when it may swap the alias: a pure state
//! machine over the rebuild group's committed offsets and the topic's ends.
//!
//! ```text
//!            lag ≤ threshold                 committed ≥ mark, every partition
//!  Filling ──────────────────▶ Blocked{marks} ─────────────────────────────────▶ Swap
//!     ▲                            │ blocked longer than max_block
//!     └──────── Lift ◀─────────────┘ (after MAX_ATTEMPTS of those: give up, lifted)
//! ```
//!
//! The invariant: **Swap only comes from Blocked, once the group has committed every partition
//! up to the mark taken after the block was acknowledged.** The live sink writes through the
//! alias; once the old index refuses writes, every event it could have written there was in
//! Kafka before that moment, so below the marks. The rebuild has committed past every such
//! event (a commit means the event's outcome is final in the new index), so the new index holds
//! everything the old one held, at the same or newer versions; the events the live sink could
//! not write wait in its retries and land in the new index once the alias points there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The rebuild blocks the old index once at most this many events are left (or the topic's
/// growth over [`GROWTH_WINDOW`], when that is more).
pub const CATCH_UP_LAG: i64 = 1000;
/// How much of the topic's growth the lag may be when the block is set.
const GROWTH_WINDOW: Duration = Duration::from_secs(2);
/// Blocks lifted for being too long before the rebuild gives up.
pub const MAX_ATTEMPTS: u32 = 3;

/// Where the rebuild group stands in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its committed offset (the next event to read), if any.
    pub committed: Option<i64>,
    /// The first offset the partition still holds.
    pub earliest: i64,
    /// One past the last offset (the high watermark).
    pub end: i64,
}

impl Position {
    /// The offset up to which the group is done.
    fn done(self) -> i64 {
        self.committed.unwrap_or(self.earliest).max(self.earliest)
    }
}

pub type Positions = BTreeMap<i32, Position>;

/// Events left per partition until `marks` (or the ends, without marks).
pub fn behind(positions: &Positions, marks: Option<&BTreeMap<i32, i64>>) -> BTreeMap<i32, i64> {
    positions
        .iter()
        .map(|(&p, pos)| {
            let until = marks.and_then(|m| m.get(&p).copied()).unwrap_or(pos.end);
            (p, (until - pos.done()).max(0))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Filling,
    /// The old index refuses writes; the marks are the ends taken after that was acknowledged.
    Blocked {
        marks: BTreeMap<i32, i64>,
        since: Instant,
    },
    Swapped,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Block writes on the old index, then call [`Catchup::blocked`] with the ends read after.
    Block,
    /// Refresh the new index and swap the alias, then call [`Catchup::swapped`].
    Swap,
    /// Lift the block: the rebuild did not reach the marks in time; it fills on.
    Lift,
    /// Lift the block and stop: it never caught up.
    GiveUp,
}

#[derive(Debug)]
pub struct Catchup {
    phase: Phase,
    max_block: Duration,
    attempts: u32,
    /// The sum of the ends at the previous observation, for the topic's growth.
    last_ends: Option<(i64, Instant)>,
    growth_per_second: f64,
}

impl Catchup {
    pub fn new(max_block: Duration) -> Self {
        Self {
            phase: Phase::Filling,
            max_block,
            attempts: 0,
            last_ends: None,
            growth_per_second: 0.0,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The lag at which the old index is blocked.
    pub fn threshold(&self) -> i64 {
        #[allow(clippy::cast_possible_truncation)] // a count of events
        let growth = (self.growth_per_second * GROWTH_WINDOW.as_secs_f64()) as i64;
        CATCH_UP_LAG.max(growth)
    }

    /// Decides the next step from the group's positions at `now`.
    pub fn next(&mut self, positions: &Positions, now: Instant) -> Step {
        let ends: i64 = positions.values().map(|p| p.end).sum();
        if let Some((last, at)) = self.last_ends {
            let seconds = now.duration_since(at).as_secs_f64();
            if seconds > 0.0 {
                #[allow(clippy::cast_precision_loss)] // a rate
                let rate = (ends - last).max(0) as f64 / seconds;
                self.growth_per_second = 0.5 * self.growth_per_second + 0.5 * rate;
            }
        }
        self.last_ends = Some((ends, now));
        match &self.phase {
            Phase::Filling if positions.is_empty() => Step::Wait,
            Phase::Filling => {
                let lag: i64 = behind(positions, None).values().sum();
                if lag <= self.threshold() {
                    Step::Block
                } else {
                    Step::Wait
                }
            }
            Phase::Blocked { marks, since } => {
                let reached = marks
                    .iter()
                    .all(|(p, &mark)| positions.get(p).is_some_and(|pos| pos.done() >= mark));
                if reached {
                    Step::Swap
                } else if now.duration_since(*since) >= self.max_block {
                    if self.attempts + 1 >= MAX_ATTEMPTS {
                        Step::GiveUp
                    } else {
                        Step::Lift
                    }
                } else {
                    Step::Wait
                }
            }
            Phase::Swapped => Step::Wait,
        }
    }

    /// The block is acknowledged and `marks` are the ends read after it.
    pub fn blocked(&mut self, marks: BTreeMap<i32, i64>, now: Instant) {
        self.phase = Phase::Blocked { marks, since: now };
    }

    /// The block was lifted without a swap: fill on.
    pub fn lifted(&mut self) {
        self.attempts += 1;
        self.phase = Phase::Filling;
    }

    pub fn swapped(&mut self) {
        self.phase = Phase::Swapped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(parts: &[(Option<i64>, i64)]) -> Positions {
        parts
            .iter()
            .enumerate()
            .map(|(p, &(committed, end))| {
                (
                    i32::try_from(p).unwrap_or(0),
                    Position {
                        committed,
                        earliest: 0,
                        end,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn blocks_only_when_the_lag_is_small() {
        let now = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(60));
        assert_eq!(c.next(&Positions::new(), now), Step::Wait);
        assert_eq!(
            c.next(&positions(&[(None, 5000), (Some(10), 5000)]), now),
            Step::Wait
        );
        assert_eq!(
            c.next(&positions(&[(Some(4900), 5000), (Some(4500), 5000)]), now),
            Step::Block
        );
    }

    #[test]
    fn a_fast_growing_topic_raises_the_threshold() {
        let start = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(60));
        let _ = c.next(&positions(&[(Some(0), 100_000)]), start);
        // 5,000 events/s of growth: 3,000 behind is within two seconds of it.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            c.next(&positions(&[(Some(102_000), 105_000)]), later),
            Step::Block
        );
    }

    #[test]
    fn swaps_only_once_every_partition_reached_the_marks_taken_after_the_block() {
        let now = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(60));
        let close = positions(&[(Some(990), 1000), (Some(1000), 1000)]);
        assert_eq!(c.next(&close, now), Step::Block);
        // Until `blocked` is called the rebuild never swaps, however far it gets.
        let done = positions(&[(Some(1000), 1000), (Some(1000), 1000)]);
        assert_eq!(c.next(&done, now), Step::Block);
        // Events arrived between the decision and the block: the marks are past them.
        c.blocked(BTreeMap::from([(0, 1010), (1, 1003)]), now);
        let p = positions(&[(Some(1010), 1020), (Some(1002), 1003)]);
        assert_eq!(c.next(&p, now), Step::Wait, "partition 1 is one short");
        let p = positions(&[(Some(1010), 1020), (Some(1003), 1003)]);
        assert_eq!(c.next(&p, now), Step::Swap);
        c.swapped();
        assert_eq!(c.next(&p, now), Step::Wait);
    }

    #[test]
    fn a_partition_the_group_does_not_report_is_not_reached() {
        let now = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(60));
        c.blocked(BTreeMap::from([(0, 10), (1, 10)]), now);
        assert_eq!(c.next(&positions(&[(Some(10), 10)]), now), Step::Wait);
    }

    #[test]
    fn an_empty_or_compacted_away_partition_is_reached_without_a_commit() {
        let now = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(60));
        c.blocked(BTreeMap::from([(0, 0), (1, 7)]), now);
        let mut p = positions(&[(None, 0), (None, 7)]);
        if let Some(pos) = p.get_mut(&1) {
            pos.earliest = 7;
        }
        assert_eq!(c.next(&p, now), Step::Swap);
    }

    #[test]
    fn a_block_held_too_long_is_lifted_then_given_up() {
        let start = Instant::now();
        let mut c = Catchup::new(Duration::from_secs(10));
        let behind = positions(&[(Some(0), 100)]);
        for attempt in 1..=MAX_ATTEMPTS {
            c.blocked(BTreeMap::from([(0, 100)]), start);
            assert_eq!(c.next(&behind, start + Duration::from_secs(5)), Step::Wait);
            let step = c.next(&behind, start + Duration::from_secs(10));
            if attempt < MAX_ATTEMPTS {
                assert_eq!(step, Step::Lift);
                c.lifted();
                assert_eq!(c.phase(), &Phase::Filling);
            } else {
                assert_eq!(step, Step::GiveUp);
            }
        }
    }
}
