//! Gaussian noise for initial latents and for the stochastic samplers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of independent N(0, 1) samples.
pub trait NoiseSource {
    /// Overwrites every element of `out` with a fresh standard-normal sample.
    fn fill_standard_normal(&mut self, out: &mut [f32]);

    /// `len` fresh standard-normal samples.
    fn standard_normal(&mut self, len: usize) -> Vec<f32> {
        let mut out = vec![0.0; len];
        self.fill_standard_normal(&mut out);
        out
    }
}

/// Reproducible noise: ChaCha8 seeded with a `u64`, mapped through `rand_distr`'s ziggurat
/// `StandardNormal`. The same seed gives the same sequence on every run and platform (ChaCha
/// is portable and endian-independent; the ziggurat uses fixed tables and IEEE arithmetic).
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn fill_standard_normal(&mut self, out: &mut [f32]) {
        for x in out {
            *x = StandardNormal.sample(&mut self.rng);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise() {
        let a = SeededNoise::new(42).standard_normal(1000);
        let b = SeededNoise::new(42).standard_normal(1000);
        assert_eq!(a, b);
        let c = SeededNoise::new(43).standard_normal(1000);
        assert_ne!(a, c);
    }

    #[test]
    fn chunking_does_not_change_the_stream() {
        let whole = SeededNoise::new(7).standard_normal(100);
        let mut rng = SeededNoise::new(7);
        let mut parts = rng.standard_normal(37);
        parts.extend(rng.standard_normal(63));
        assert_eq!(whole, parts);
    }

    #[test]
    fn golden_values_pin_the_algorithm() {
        // If these change, every seed in the wild produces a different image: that is a
        // breaking change (a dependency bump altered ChaCha8 or the ziggurat).
        let got: [f32; 4] = SeededNoise::new(0).standard_normal(4).try_into().unwrap();
        // ≈ [0.69996077, -0.14406164, 0.30288628, -1.3745139]
        let want = [0x3f3330a1, 0xbe1384e5, 0x3e9b13e9, 0xbfaff012].map(f32::from_bits);
        assert_eq!(
            got.map(f32::to_bits),
            want.map(f32::to_bits),
            "got {got:?}, want {want:?}"
        );
    }

    #[test]
    fn roughly_unit_normal() {
        let n = 200_000;
        let xs = SeededNoise::new(1234).standard_normal(n);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(xs.iter().all(|x| x.is_finite()));
    }
}
