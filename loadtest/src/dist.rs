//! A seeded random source and a Zipf sampler, so a run's request sequence is the same
//! every time for the same seed (no dependency on an RNG crate's version).

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for load shapes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-40 for the sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Zipf over ranks `0..n`: P(rank k) ∝ 1 / (k + 1)^s. A precomputed CDF and a binary
/// search per sample.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` ≥ 1 items, exponent `s` ≥ 0 (0 is uniform).
    pub fn new(n: usize, s: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("zipf: need at least one item".into());
        }
        if !(s >= 0.0 && s.is_finite()) {
            return Err("zipf: the exponent must be a finite number ≥ 0".into());
        }
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += (k as f64).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        // Guard against rounding: the last bucket must catch every u < 1.
        cdf[n - 1] = 1.0;
        Ok(Self { cdf })
    }

    /// A rank in `0..n`; rank 0 is the most popular.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        // The first rank whose cumulative probability exceeds u.
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }

    /// Probability mass of the `k` most popular ranks.
    pub fn mass_of_top(&self, k: usize) -> f64 {
        if k == 0 { 0.0 } else { self.cdf[k.min(self.cdf.len()) - 1] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        let mut r = Rng::new(3);
        let mean = (0..100_000).map(|_| r.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let mut v: Vec<usize> = (0..50).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn zipf_matches_its_distribution() {
        // s = 1, n = 10: P(k) = 1 / (k H_10), H_10 = 2.928968...
        let h10: f64 = (1..=10).map(|k| 1.0 / k as f64).sum();
        let z = Zipf::new(10, 1.0).unwrap();
        let mut rng = Rng::new(42);
        let draws = 200_000;
        let mut counts = [0usize; 10];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        for (k, &c) in counts.iter().enumerate() {
            let expected = 1.0 / ((k + 1) as f64 * h10);
            let got = c as f64 / draws as f64;
            // Four standard deviations of a binomial proportion.
            let sd = (expected * (1.0 - expected) / draws as f64).sqrt();
            assert!((got - expected).abs() < 4.0 * sd, "rank {k}: {got} vs {expected}");
        }
        assert!((z.mass_of_top(1) - 1.0 / h10).abs() < 1e-12);
        assert_eq!(z.mass_of_top(10), 1.0);
        assert_eq!(z.mass_of_top(99), 1.0);
    }

    #[test]
    fn zipf_edge_cases() {
        let uniform = Zipf::new(4, 0.0).unwrap();
        assert!((uniform.mass_of_top(2) - 0.5).abs() < 1e-12);
        let single = Zipf::new(1, 1.2).unwrap();
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| single.sample(&mut rng) == 0));
        // Steeper exponents concentrate more mass at the top.
        let h = |n: usize| (1..=n).map(|k| 1.0 / k as f64).sum::<f64>();
        let one = Zipf::new(10_000, 1.0).unwrap().mass_of_top(800);
        assert!((one - h(800) / h(10_000)).abs() < 1e-9, "{one}");
        assert!(Zipf::new(10_000, 0.8).unwrap().mass_of_top(800) < one);
        assert!(Zipf::new(10_000, 1.2).unwrap().mass_of_top(800) > one);
        assert!(Zipf::new(0, 1.0).is_err() && Zipf::new(5, -1.0).is_err() && Zipf::new(5, f64::NAN).is_err());
        // Same seed, same sequence.
        let z = Zipf::new(1000, 1.0).unwrap();
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        assert!((0..1000).all(|_| z.sample(&mut r1) == z.sample(&mut r2)));
    }
}
