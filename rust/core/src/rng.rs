//! A seeded, counter-based random number generator.
//!
//! Every uniform is a pure function of `(seed, stream, counter)`:
//!
//! ```text
//! h = mix(seed ^ K0);  h = mix(h ^ stream * K1);  h = mix(h ^ counter * K2)
//! u = (h >> 11) * 2^-53                       // uniform in [0, 1), 53 random bits
//! ```
//!
//! where `mix` is the SplitMix64 finaliser (Stafford's "mix13") and `K0..K2` are odd
//! constants. There is no hidden state, so a result never depends on threading, batching
//! or the order in which nodes are visited: a kernel names each draw by a counter (for
//! instance `node << 32 | slot`) and a batch row by its stream. The same seed always gives
//! the same draws, on every platform.
//!
//! This is not a cryptographic generator; it is a statistically sound hash (SplitMix64
//! passes BigCrush as a sequential generator, and three chained finalisers decorrelate
//! neighbouring seeds, streams and counters).

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xD1B5_4A32_D192_ED03;
const K2: u64 = 0xAEF1_7502_108E_F2D9;

/// The SplitMix64 finaliser: a bijective 64-bit mixing function.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for `(seed, stream, counter)`.
#[inline]
pub fn bits(seed: u64, stream: u64, counter: u64) -> u64 {
    let h = mix64(seed ^ K0);
    let h = mix64(h ^ stream.wrapping_mul(K1));
    mix64(h ^ counter.wrapping_mul(K2))
}

/// A uniform double in `[0, 1)` for `(seed, stream, counter)` (53 random bits).
#[inline]
pub fn uniform(seed: u64, stream: u64, counter: u64) -> f64 {
    (bits(seed, stream, counter) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The counter of draw `slot` at node (or step) `node`: `node << 32 | slot`.
#[inline]
pub fn counter(node: usize, slot: u32) -> u64 {
    ((node as u64) << 32) | slot as u64
}

/// One stream of a seeded generator: `uniform(c)` is [`uniform`]`(seed, stream, c)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub seed: u64,
    pub stream: u64,
}

impl Stream {
    pub fn new(seed: u64, stream: u64) -> Self {
        Stream { seed, stream }
    }

    #[inline]
    pub fn uniform(&self, counter: u64) -> f64 {
        uniform(self.seed, self.stream, counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        for c in 0..1000 {
            let u = uniform(7, 3, c);
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u, uniform(7, 3, c));
        }
        assert_ne!(uniform(7, 3, 1), uniform(7, 4, 1));
        assert_ne!(uniform(7, 3, 1), uniform(8, 3, 1));
        assert_ne!(uniform(0, 0, 0), uniform(0, 0, 1));
    }

    #[test]
    fn moments_and_buckets() {
        // Mean 1/2, variance 1/12, and a 16-bucket chi-square, over neighbouring counters
        // and over neighbouring streams (the two ways kernels use the generator).
        for by_stream in [false, true] {
            let n = 200_000u64;
            let mut buckets = [0u64; 16];
            let (mut s, mut s2) = (0.0, 0.0);
            for i in 0..n {
                let u = if by_stream {
                    uniform(1, i, 5)
                } else {
                    uniform(1, 5, i)
                };
                s += u;
                s2 += u * u;
                buckets[(u * 16.0) as usize] += 1;
            }
            let mean = s / n as f64;
            let var = s2 / n as f64 - mean * mean;
            assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
            assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
            let e = n as f64 / 16.0;
            let chi2: f64 = buckets.iter().map(|&b| (b as f64 - e).powi(2) / e).sum();
            // 15 degrees of freedom: P(chi2 > 37.7) = 0.001.
            assert!(chi2 < 37.7, "chi2 {chi2}");
        }
    }

    #[test]
    fn counter_layout() {
        assert_eq!(counter(0, 0), 0);
        assert_eq!(counter(1, 2), (1u64 << 32) | 2);
        assert_eq!(Stream::new(3, 4).uniform(9), uniform(3, 4, 9));
    }
}
