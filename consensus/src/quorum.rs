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

    /// Rows of `testdata/majority.txt`: values (`-` for none), quorum, agreed.
    fn table() -> Vec<(Vec<u64>, usize, u64)> {
        let number = |text: &str| text.trim().parse::<u64>().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        include_str!("../testdata/majority.txt")
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| {
                let columns: Vec<&str> = line.split('|').collect();
                assert_eq!(columns.len(), 3, "three columns in {line:?}");
                let values = match columns[0].trim() {
                    "-" => Vec::new(),
                    values => values.split_whitespace().map(number).collect(),
                };
                (values, number(columns[1]) as usize, number(columns[2]))
            })
            .collect()
    }

    #[test]
    fn the_quorum_th_highest_value_is_agreed() {
        let table = table();
        assert_eq!(table.len(), 12, "every row of the table is read");
        for (values, quorum, expected) in table {
            assert_eq!(
                agreed(values.clone(), quorum),
                expected,
                "values {values:?}, quorum {quorum}"
            );
        }
    }
}
