//! The crate's one seeded pseudo-random generator (SplitMix64), and its output mix as a hash.
//!
//! Training's sampler and miners, the held-out split, and the index's level draw must give the
//! same results for the same seed, on every platform and across dependency upgrades, so they use
//! this fixed algorithm rather than a general-purpose crate; tests use it for seeded data too. It
//! is not cryptographic. A `SeededRng` is a plain value: each user owns its own, nothing is shared
//! between threads. This module depends on nothing else in the crate.

/// Added to the state on every step (the 64-bit golden ratio, as in SplitMix64).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: a 64-bit state advanced by a constant and passed through an avalanche mix.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one numbered stream of a seed (for example one epoch), independent of the
    /// other streams of the same seed and of the same stream under other seeds.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let seed_mix = mix(seed.wrapping_add(GOLDEN_GAMMA));
        let stream_mix = mix(stream.wrapping_mul(GOLDEN_GAMMA).wrapping_add(1));
        Self::new(seed_mix ^ stream_mix.rotate_left(17))
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// A uniform index in `0..bound` (`bound` must be positive).
    ///
    /// Uses the multiply-high reduction; its bias is below 2^-32 for any `bound` that fits a
    /// batch or a catalogue, which is negligible for sampling training data.
    pub fn below(&mut self, bound: usize) -> usize {
        debug_assert!(bound > 0, "below(0) has no valid answer");
        let wide = u128::from(self.next_u64()) * bound as u128;
        (wide >> 64) as usize
    }

    /// A uniform `f32` in `[-1, 1)`, from the top 24 bits of the next output.
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let pick = self.below(last + 1);
            items.swap(last, pick);
        }
    }
}

/// The first output of `SeededRng::new(value)`: a stateless, well-mixed 64-bit hash of `value`
/// (for a deterministic draw keyed by a position, without keeping a generator).
pub fn splitmix64(value: u64) -> u64 {
    mix(value.wrapping_add(GOLDEN_GAMMA))
}

/// The SplitMix64 output function: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_different_seed_different_sequence() {
        let draw = |seed| {
            let mut rng = SeededRng::new(seed);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn streams_of_one_seed_differ() {
        let first = SeededRng::for_stream(3, 0).next_u64();
        let second = SeededRng::for_stream(3, 1).next_u64();
        let other_seed = SeededRng::for_stream(4, 0).next_u64();
        assert_ne!(first, second);
        assert_ne!(first, other_seed);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut rng = SeededRng::new(11);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let value = rng.below(5);
            assert!(value < 5);
            seen[value] = true;
        }
        assert!(seen.iter().all(|&hit| hit));
    }

    #[test]
    fn the_hash_is_the_first_output_and_symmetric_stays_in_range() {
        assert_eq!(splitmix64(42), SeededRng::new(42).next_u64());
        let mut rng = SeededRng::new(9);
        assert!((0..1000).map(|_| rng.symmetric()).all(|x| (-1.0..1.0).contains(&x)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = SeededRng::new(5);
        let mut items: Vec<usize> = (0..20).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(items, sorted, "20 items shuffled back into order is a 1/20! event");
    }
}
