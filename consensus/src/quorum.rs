//! The majority rule, in one place: a value is agreed once a quorum of the
//! voting nodes has reached it. Both the commit index (invariant 6 adds the
//! current-term check beside it) and the confirmed read round are this rule.

/// The highest value that at least `quorum` of `values` (one per voting node,
/// the leader's own included) have reached: sorted from the highest, the
/// `quorum`-th. 0 when there are fewer than `quorum` values (no agreement).
pub(crate) fn agreed(mut values: Vec<u64>, quorum: usize) -> u64 {
    values.sort_unstable_by(|a, b| b.cmp(a));
    quorum.checked_sub(1).and_then(|i| values.get(i)).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::agreed;

    #[test]
    fn the_quorum_th_highest_value_is_agreed() {
        // values (one per node, in any order) | quorum | agreed
        let table: &[(&[u64], usize, u64)] = &[
            (&[5], 1, 5),
            (&[5, 3], 2, 3),
            (&[5, 3, 1], 2, 3),
            (&[1, 3, 5], 2, 3),
            (&[9, 9, 1], 2, 9),
            (&[4, 4, 2, 2], 3, 2),
            (&[9, 1, 1, 9, 9], 3, 9),
            (&[7, 0, 0, 0, 7], 3, 0),
            (&[8, 6, 7, 5, 3], 3, 6),
            // Fewer values than a quorum: nothing is agreed.
            (&[], 1, 0),
            (&[3, 3], 3, 0),
            // A quorum of 0 is no rule at all: nothing is agreed.
            (&[3], 0, 0),
        ];
        for (values, quorum, expected) in table {
            assert_eq!(
                agreed(values.to_vec(), *quorum),
                *expected,
                "values {values:?}, quorum {quorum}"
            );
        }
    }
}
