//! Which offset of each partition may be committed.
//!
//! Every message a sink receives is registered as pending and marked done when its outcome is
//! final (indexed, deleted, stale, filtered, dead-lettered). The committable offset of a
//! partition is its lowest pending offset, or one past the last message seen when nothing is
//! pending: a commit never passes an event whose outcome is not final, whatever order batches
//! finish in.
//!
//! Each assignment of a partition gets a new generation. Work still in flight when a partition
//! is revoked reports against the old generation and is ignored: it can never move the offset of
//! a partition this process no longer owns, or of a later assignment of it.

use std::collections::{BTreeSet, HashMap};

/// One message's place: partition, the assignment generation it was received under, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub partition: i32,
    pub generation: u64,
    pub offset: i64,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    pending: BTreeSet<i64>,
    /// One past the highest offset received, once one was.
    next: Option<i64>,
    /// Last offset committed (or known committed) for this assignment.
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    partitions: HashMap<i32, PartitionState>,
    generations: u64,
}

impl Tracker {
    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, partition: i32) {
        self.generations += 1;
        self.partitions.insert(
            partition,
            PartitionState {
                generation: self.generations,
                ..PartitionState::default()
            },
        );
    }

    /// Stops tracking a revoked partition; returns what may still be committed for it.
    pub fn revoke(&mut self, partition: i32) -> Option<i64> {
        let state = self.partitions.remove(&partition)?;
        Self::position(&state).filter(|&p| Some(p) != state.committed)
    }

    /// Registers a received message as pending. Returns its slot, or `None` when the partition
    /// is not assigned (a message fetched just before a revocation).
    pub fn receive(&mut self, partition: i32, offset: i64) -> Option<Slot> {
        let state = self.partitions.get_mut(&partition)?;
        state.pending.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Slot {
            partition,
            generation: state.generation,
            offset,
        })
    }

    /// Marks a message's outcome final. Ignored for a slot of an earlier assignment.
    pub fn done(&mut self, slot: Slot) {
        if let Some(state) = self.partitions.get_mut(&slot.partition)
            && state.generation == slot.generation
        {
            state.pending.remove(&slot.offset);
        }
    }

    fn position(state: &PartitionState) -> Option<i64> {
        state.pending.first().copied().or(state.next)
    }

    /// Offsets to commit now: every partition whose committable offset moved since the last
    /// call. The caller commits them and they count as committed.
    pub fn to_commit(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, state) in &mut self.partitions {
            if let Some(position) = Self::position(state)
                && Some(position) != state.committed
            {
                state.committed = Some(position);
                out.push((partition, position));
            }
        }
        out.sort_unstable();
        out
    }

    /// Messages received and not final yet, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    /// Assigned partitions.
    pub fn assigned(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.partitions.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_pending_offset() {
        let mut t = Tracker::default();
        t.assign(0);
        let slots: Vec<Slot> = (10..15).map(|o| t.receive(0, o).unwrap()).collect();
        assert_eq!(t.to_commit(), vec![(0, 10)]);
        t.done(slots[1]);
        t.done(slots[2]);
        assert_eq!(t.to_commit(), vec![], "offset 10 is still pending");
        t.done(slots[0]);
        assert_eq!(t.to_commit(), vec![(0, 13)]);
        t.done(slots[4]);
        t.done(slots[3]);
        assert_eq!(t.to_commit(), vec![(0, 15)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn revoked_work_never_moves_a_later_assignment() {
        let mut t = Tracker::default();
        t.assign(3);
        let old = t.receive(3, 100).unwrap();
        assert_eq!(t.revoke(3), Some(100));
        assert_eq!(t.receive(3, 101), None, "not assigned any more");
        t.assign(3);
        let new = t.receive(3, 100).unwrap();
        t.done(old);
        assert_eq!(t.to_commit(), vec![(3, 100)], "the old slot did not count");
        t.done(new);
        assert_eq!(t.to_commit(), vec![(3, 101)]);
        assert_eq!(t.revoke(3), None, "already committed");
        assert_eq!(t.assigned(), Vec::<i32>::new());
    }
}
