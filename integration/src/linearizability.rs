//! A linearizability checker for histories of a key-value store.
//!
//! Each key is an independent register (put, get, delete), so a history is
//! checked key by key (linearizability is compositional). For one key the
//! search is Wing and Gong's, with Lowe's memoization as Porcupine does it:
//! walk the history in time order; at each step try to linearize one of the
//! operations that have been invoked and whose effect the register accepts;
//! an operation must be linearized before the first return that follows its
//! completion; remember every (set of linearized operations, register value)
//! already explored so no state is searched twice.
//!
//! An operation whose outcome is unknown (a timeout, a lost connection) may
//! have taken effect at any point after its invocation, or never: it has no
//! completion time and any result is accepted for it.
//!
//! Written here rather than taken from a crate: the model is small, the
//! checker must understand "unknown outcome" exactly as the harness records
//! it, and its own tests below pin the behaviour down.

use std::collections::{BTreeMap, HashSet};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Set the key to this value; returns the value it replaced.
    Put(String),
    /// Remove the key; returns the value it had.
    Delete,
    /// Read the key's value.
    Get,
}

/// What it got back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Success: the value read (get) or the old value replaced (put, delete).
    Returned(Option<String>),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (nanoseconds here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it; only shown in reports, the check ignores it.
    pub client: usize,
    /// The key it touched: each key is checked as a register of its own.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// What came back.
    pub outcome: Outcome,
    /// When the client sent it.
    pub invoked: u64,
    /// None for an unknown outcome: it may take effect any time after `invoked`.
    pub completed: Option<u64>,
}

/// The verdict for a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's operations fit some order that respects real time.
    Linearizable,
    /// No order explains this key's operations.
    Violation {
        /// The first key, in key order, that failed.
        key: String,
        /// Every operation on that key, in history order.
        operations: Vec<Operation>,
    },
    /// The search for this key exceeded its budget (neither proved nor refuted).
    GaveUp {
        /// The first key, in key order, whose search ran out of budget.
        key: String,
    },
}

/// Checks a history, key by key, exploring at most `budget` states per key.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_register(&ops, budget) {
            Some(true) => {}
            Some(false) => {
                return Verdict::Violation {
                    key: key.to_string(),
                    operations: ops.into_iter().cloned().collect(),
                }
            }
            None => return Verdict::GaveUp { key: key.to_string() },
        }
    }
    Verdict::Linearizable
}

/// The register's response to `call` from `state`: Some(new state) if `outcome` fits.
fn step(state: &Option<String>, call: &Call, outcome: &Outcome) -> Option<Option<String>> {
    let fits = |expected: &Option<String>| match outcome {
        Outcome::Unknown => true,
        Outcome::Returned(got) => got == expected,
    };
    match call {
        Call::Get => fits(state).then(|| state.clone()),
        Call::Put(value) => fits(state).then(|| Some(value.clone())),
        Call::Delete => fits(state).then_some(None),
    }
}

#[derive(Clone, Copy)]
enum Event {
    Invoke(usize),
    Return(usize),
}

/// Some(true): linearizable; Some(false): not; None: budget exhausted.
fn check_register(ops: &[&Operation], budget: u64) -> Option<bool> {
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    // Events in time order; at equal times invocations come first (they may overlap).
    let mut events: Vec<(u64, u8, Event)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, 0, Event::Invoke(i)));
        if let Some(done) = op.completed {
            events.push((done.max(op.invoked), 1, Event::Return(i)));
        }
    }
    events.sort_by_key(|&(t, order, _)| (t, order));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let is_set = |bits: &[u64], i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut explored = 0u64;

    /// One choice on the search path: the op linearized (by its invocation's event
    /// position) and the register value before it, to undo the choice.
    struct Choice {
        event: usize,
        op: usize,
        state_before: Option<String>,
    }
    let mut path: Vec<Choice> = Vec::new();
    let mut state: Option<String> = None;
    // After undoing a choice, only candidates later in event order are tried.
    let mut resume_after: Option<usize> = None;
    loop {
        explored += 1;
        if explored > budget {
            return None;
        }
        // Every op must be linearized before the first return of an op not yet linearized.
        let horizon = events
            .iter()
            .position(|e| matches!(e, Event::Return(i) if !is_set(&linearized, *i)));
        let Some(horizon) = horizon else {
            // Every completed op is placed; unknown ones left over never took effect.
            return Some(true);
        };
        let mut chosen = None;
        for (k, event) in events[..horizon].iter().enumerate() {
            let Event::Invoke(i) = *event else { continue };
            if is_set(&linearized, i) || resume_after.is_some_and(|r| k <= r) {
                continue;
            }
            if let Some(next) = step(&state, &ops[i].call, &ops[i].outcome) {
                let mut bits = linearized.clone();
                bits[i / 64] |= 1 << (i % 64);
                if seen.insert((bits, next.clone())) {
                    chosen = Some((k, i, next));
                    break;
                }
            }
        }
        resume_after = None;
        match chosen {
            Some((event, op, next)) => {
                path.push(Choice {
                    event,
                    op,
                    state_before: std::mem::replace(&mut state, next),
                });
                linearized[op / 64] |= 1 << (op % 64);
            }
            None => {
                let Some(choice) = path.pop() else {
                    return Some(false);
                };
                linearized[choice.op / 64] &= !(1 << (choice.op % 64));
                state = choice.state_before;
                resume_after = Some(choice.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome, invoked: u64, completed: Option<u64>) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            outcome,
            invoked,
            completed,
        }
    }
    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }
    fn ret(v: Option<&str>) -> Outcome {
        Outcome::Returned(v.map(String::from))
    }
    fn verdict(history: &[Operation]) -> Verdict {
        check(history, 1_000_000)
    }
    fn is_violation(history: &[Operation]) -> bool {
        matches!(verdict(history), Verdict::Violation { .. })
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(0, Call::Get, ret(Some("a")), 2, Some(3)),
            op(0, put("b"), ret(Some("a")), 4, Some(5)),
            op(0, Call::Delete, ret(Some("b")), 6, Some(7)),
            op(0, Call::Get, ret(None), 8, Some(9)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The get overlaps the put: both old and new values are fine.
        for seen in [None, Some("a")] {
            let h = [
                op(0, put("a"), ret(None), 0, Some(10)),
                op(1, Call::Get, ret(seen), 1, Some(9)),
            ];
            assert_eq!(verdict(&h), Verdict::Linearizable, "get saw {seen:?}");
        }
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(0, put("b"), ret(Some("a")), 2, Some(3)),
            op(1, Call::Get, ret(Some("a")), 4, Some(5)),
        ];
        assert!(is_violation(&h));
    }

    #[test]
    fn lost_write_is_rejected() {
        // An acknowledged put that the final read does not see, with nothing after it.
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(1, put("b"), ret(Some("a")), 2, Some(3)),
            op(2, Call::Get, ret(Some("a")), 10, Some(11)),
        ];
        assert!(is_violation(&h));
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(2, Call::Get, ret(None), 10, Some(11)),
        ];
        assert!(is_violation(&h));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(1, Call::Get, ret(Some("zzz")), 2, Some(3)),
        ];
        assert!(is_violation(&h));
    }

    #[test]
    fn a_write_applied_twice_is_rejected() {
        // put a, put b, then a read of a again: a was applied a second time.
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(1, put("b"), ret(Some("a")), 2, Some(3)),
            op(2, Call::Get, ret(Some("b")), 4, Some(5)),
            op(2, Call::Get, ret(Some("a")), 6, Some(7)),
        ];
        assert!(is_violation(&h));
        // Or the old value a put returns shows a double application.
        let h = [
            op(0, put("a"), ret(None), 0, Some(1)),
            op(1, put("a"), ret(Some("a")), 2, Some(3)),
            op(2, put("c"), ret(Some("a")), 4, Some(5)),
            op(2, put("d"), ret(Some("a")), 6, Some(7)),
        ];
        assert!(is_violation(&h));
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let applied = [
            op(0, put("a"), Outcome::Unknown, 0, None),
            op(1, Call::Get, ret(Some("a")), 5, Some(6)),
        ];
        assert_eq!(verdict(&applied), Verdict::Linearizable);
        let never = [
            op(0, put("a"), Outcome::Unknown, 0, None),
            op(1, Call::Get, ret(None), 5, Some(6)),
        ];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let early = [
            op(1, Call::Get, ret(Some("a")), 0, Some(1)),
            op(0, put("a"), Outcome::Unknown, 5, None),
        ];
        assert!(is_violation(&early));
        // Nor can it be seen, unseen, then seen again.
        let flicker = [
            op(0, put("a"), Outcome::Unknown, 0, None),
            op(1, Call::Get, ret(Some("a")), 5, Some(6)),
            op(1, Call::Get, ret(None), 7, Some(8)),
        ];
        assert!(is_violation(&flicker));
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![
            op(0, put("a"), ret(None), 0, Some(1)),
            op(1, Call::Get, ret(Some("a")), 2, Some(3)),
        ];
        h.push(Operation {
            key: "other".into(),
            ..op(2, Call::Get, ret(None), 2, Some(3))
        });
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    /// The definition, by brute force: some order of the operations (leaving out any
    /// unknown ones) that respects real time and that the register accepts.
    fn brute_force(ops: &[Operation]) -> bool {
        fn search(ops: &[Operation], used: &mut Vec<bool>, state: Option<String>) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !used[i]).collect();
            if pending.iter().all(|&i| ops[i].completed.is_none()) {
                return true;
            }
            for &i in &pending {
                // i may go next only if no pending op completed before i was invoked.
                let blocked = pending
                    .iter()
                    .any(|&j| j != i && ops[j].completed.is_some_and(|done| done < ops[i].invoked));
                if blocked {
                    continue;
                }
                if let Some(next) = step(&state, &ops[i].call, &ops[i].outcome) {
                    used[i] = true;
                    if search(ops, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        search(ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let values = [None, Some("a"), Some("b")];
        let (mut good, mut bad) = (0, 0);
        for _ in 0..4000 {
            let len = rng.gen_range(1..=6);
            let history: Vec<Operation> = (0..len)
                .map(|c| {
                    let invoked = rng.gen_range(0..20);
                    let unknown = rng.gen_bool(0.15);
                    let call = match rng.gen_range(0..3) {
                        0 => Call::Get,
                        1 => Call::Delete,
                        _ => Call::Put(["a", "b"][rng.gen_range(0..2)].to_string()),
                    };
                    let outcome = if unknown {
                        Outcome::Unknown
                    } else {
                        Outcome::Returned(values[rng.gen_range(0..3)].map(String::from))
                    };
                    let completed = (!unknown).then(|| invoked + rng.gen_range(1..10));
                    op(c, call, outcome, invoked, completed)
                })
                .collect();
            let expected = brute_force(&history);
            let got = verdict(&history);
            assert_eq!(got == Verdict::Linearizable, expected, "{history:#?}");
            if expected {
                good += 1
            } else {
                bad += 1
            }
        }
        assert!(good > 200 && bad > 200, "both kinds exercised: {good} good, {bad} bad");
    }

    #[test]
    fn many_concurrent_writers_are_checked_quickly() {
        // 6 clients, 40 overlapping rounds: a correct register history.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        let mut t = 0u64;
        for round in 0..40 {
            for client in 0..6 {
                let v = format!("{round}-{client}");
                h.push(op(
                    client,
                    Call::Put(v.clone()),
                    Outcome::Returned(value.clone()),
                    t,
                    Some(t + 50),
                ));
                value = Some(v);
                t += 3;
            }
        }
        assert_eq!(check(&h, 5_000_000), Verdict::Linearizable);
    }
}
