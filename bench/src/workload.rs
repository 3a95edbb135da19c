//! What the benchmark asks of a store: which keys, which operations, which values.
//!
//! The same generator drives every target, so kvs, etcd and Redis see the same
//! request stream for the same seed.

use rand::rngs::SmallRng;
use rand::Rng;
use serde::Serialize;

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// 90% of requests go to the hottest 10% of the keys (the original's hot/cold test).
    Hotcold,
}

/// Which operations, and in what proportion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// GET only (linearizable on kvs and etcd).
    Read,
    /// PUT only.
    Write,
    /// GET and PUT with equal odds.
    Mixed,
}

/// Share of requests that go to the hot keys in [`Distribution::Hotcold`].
const HOT_REQUESTS: f64 = 0.9;
/// Share of the keys that are hot.
const HOT_KEYS: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get(u64),
    Put(u64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub distribution: Distribution,
    pub mix: Mix,
    /// Distinct keys, numbered `0..keys`.
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
}

impl Workload {
    /// `uniform-read`, `hotcold-mixed`, ...
    pub fn label(&self) -> String {
        format!("{}-{}", distribution_name(self.distribution), mix_name(self.mix))
    }

    /// Key number `index`, exactly `key_size` bytes where the number fits
    /// (`k` and zero-padded digits), longer only when it does not.
    pub fn key(&self, index: u64) -> String {
        let digits = self.key_size.saturating_sub(1);
        format!("k{index:0digits$}")
    }

    /// A value of `value_size` bytes: letters and digits only, so it is valid
    /// for every target and for the original's C rules.
    pub fn value(&self, rng: &mut SmallRng) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..self.value_size)
            .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
            .collect()
    }

    pub fn next_key(&self, rng: &mut SmallRng) -> u64 {
        let keys = self.keys.max(1);
        match self.distribution {
            Distribution::Uniform => rng.gen_range(0..keys),
            Distribution::Hotcold => {
                let hot = ((keys as f64 * HOT_KEYS) as u64).clamp(1, keys);
                if hot == keys || rng.gen_bool(HOT_REQUESTS) {
                    rng.gen_range(0..hot)
                } else {
                    rng.gen_range(hot..keys)
                }
            }
        }
    }

    pub fn next_op(&self, rng: &mut SmallRng) -> Op {
        let key = self.next_key(rng);
        let write = match self.mix {
            Mix::Read => false,
            Mix::Write => true,
            Mix::Mixed => rng.gen_bool(0.5),
        };
        if write {
            Op::Put(key)
        } else {
            Op::Get(key)
        }
    }
}

pub fn distribution_name(d: Distribution) -> &'static str {
    match d {
        Distribution::Uniform => "uniform",
        Distribution::Hotcold => "hotcold",
    }
}

pub fn mix_name(m: Mix) -> &'static str {
    match m {
        Mix::Read => "read",
        Mix::Write => "write",
        Mix::Mixed => "mixed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn workload(distribution: Distribution, mix: Mix) -> Workload {
        Workload {
            distribution,
            mix,
            keys: 1000,
            key_size: 16,
            value_size: 256,
        }
    }

    #[test]
    fn keys_and_values_have_the_asked_sizes() {
        let w = workload(Distribution::Uniform, Mix::Write);
        assert_eq!(w.key(0), "k000000000000000");
        assert_eq!(w.key(99_999).len(), 16);
        let mut rng = SmallRng::seed_from_u64(1);
        let value = w.value(&mut rng);
        assert_eq!(value.len(), 256);
        assert!(value.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn hotcold_sends_nine_in_ten_requests_to_a_tenth_of_the_keys() {
        let w = workload(Distribution::Hotcold, Mix::Read);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000;
        let hot = (0..n).filter(|_| w.next_key(&mut rng) < 100).count();
        let share = hot as f64 / n as f64;
        assert!((0.89..0.91).contains(&share), "hot share {share}");
        let uniform = workload(Distribution::Uniform, Mix::Read);
        let hot = (0..n).filter(|_| uniform.next_key(&mut rng) < 100).count();
        let share = hot as f64 / n as f64;
        assert!(
            (0.09..0.11).contains(&share),
            "uniform share of the first tenth {share}"
        );
    }

    #[test]
    fn mixes_choose_their_operations() {
        let mut rng = SmallRng::seed_from_u64(3);
        let count_puts = |mix, rng: &mut SmallRng| {
            let w = workload(Distribution::Uniform, mix);
            (0..10_000).filter(|_| matches!(w.next_op(rng), Op::Put(_))).count()
        };
        assert_eq!(count_puts(Mix::Read, &mut rng), 0);
        assert_eq!(count_puts(Mix::Write, &mut rng), 10_000);
        let mixed = count_puts(Mix::Mixed, &mut rng);
        assert!((4_700..5_300).contains(&mixed), "{mixed} puts of 10000");
    }
}
