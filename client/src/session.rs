//! Exactly-once bookkeeping for writes.
//!
//! Every put or delete takes the next sequence number of the client's session.
//! The server remembers the outcome of each `(client_id, seq)` until the client
//! reports, through `acked_below`, that it has received every answer below that
//! number. A write counts as answered once the caller got *any* final result
//! for it (value, error or timeout): it will never be re-sent after that, so the
//! server may forget it.

use std::collections::BTreeSet;

/// Sequence numbers handed out and still waiting for their answer.
#[derive(Debug, Clone)]
pub(crate) struct SessionTracker {
    next_seq: u64,
    in_flight: BTreeSet<u64>,
}

impl SessionTracker {
    pub(crate) fn new() -> Self {
        SessionTracker {
            next_seq: 1,
            in_flight: BTreeSet::new(),
        }
    }

    /// Assigns the next sequence number and marks it in flight.
    pub(crate) fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// The caller has its answer for `seq`; it will not be re-sent.
    pub(crate) fn finish(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// The smallest sequence number whose answer the caller has not received
    /// yet; with nothing in flight, the next number to be assigned.
    pub(crate) fn acked_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_session_acks_below_one() {
        let tracker = SessionTracker::new();
        assert_eq!(tracker.acked_below(), 1);
    }

    #[test]
    fn sequential_writes_advance_acked_below() {
        let mut tracker = SessionTracker::new();
        let seq = tracker.begin();
        assert_eq!(seq, 1);
        assert_eq!(tracker.acked_below(), 1);
        tracker.finish(seq);
        assert_eq!(tracker.acked_below(), 2);
        let seq = tracker.begin();
        assert_eq!(seq, 2);
        assert_eq!(tracker.acked_below(), 2);
        tracker.finish(seq);
        assert_eq!(tracker.acked_below(), 3);
    }

    #[test]
    fn out_of_order_completion_holds_acked_below_at_oldest_pending() {
        let mut tracker = SessionTracker::new();
        let seqs: Vec<u64> = (0..5).map(|_| tracker.begin()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(tracker.acked_below(), 1);

        // Answers arrive 3, 5, 2 first: 1 is still outstanding.
        tracker.finish(3);
        tracker.finish(5);
        tracker.finish(2);
        assert_eq!(tracker.acked_below(), 1);

        // 1 answered: the oldest outstanding is now 4.
        tracker.finish(1);
        assert_eq!(tracker.acked_below(), 4);

        // A new write while 4 is outstanding does not move the mark.
        assert_eq!(tracker.begin(), 6);
        assert_eq!(tracker.acked_below(), 4);

        tracker.finish(4);
        assert_eq!(tracker.acked_below(), 6);
        tracker.finish(6);
        assert_eq!(tracker.acked_below(), 7);
    }

    #[test]
    fn finishing_twice_or_unknown_seq_is_harmless() {
        let mut tracker = SessionTracker::new();
        let a = tracker.begin();
        let b = tracker.begin();
        tracker.finish(a);
        tracker.finish(a);
        tracker.finish(42);
        assert_eq!(tracker.acked_below(), b);
        tracker.finish(b);
        assert_eq!(tracker.acked_below(), 3);
    }
}
