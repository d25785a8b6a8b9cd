//! A delay with a spread: how long a fake holds an answer back. Real Cloud Storage answers most
//! uploads in tens of milliseconds and a few in far more, which a constant delay would hide.
//! Service latencies are commonly modelled as log-normal: the logarithm of the delay is normal,
//! so the spread is proportional to the median and the tail is long on one side only.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use std::time::Duration;

/// A log-normal delay: `median` is its 50th percentile, `sigma` the standard deviation of its
/// logarithm (0: always the median; 0.5: the 95th percentile at 2.3 times the median; 1: at 5.2
/// times).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    median: Duration,
    sigma: f64,
    /// `None` when every sample is the median (no spread, or a zero median).
    spread: Option<LogNormal<f64>>,
}

impl Latency {
    /// No delay at all.
    pub const ZERO: Latency = Latency { median: Duration::ZERO, sigma: 0.0, spread: None };

    /// A delay around `median`, spread by `sigma`.
    ///
    /// # Panics
    ///
    /// If `sigma` is negative or not finite: a fake set up with that is a bug of its caller.
    pub fn new(median: Duration, sigma: f64) -> Latency {
        assert!(sigma.is_finite() && sigma >= 0.0, "a latency's sigma must be >= 0, not {sigma}");
        let spread = (sigma > 0.0 && !median.is_zero())
            .then(|| LogNormal::new(median.as_secs_f64().ln(), sigma))
            .and_then(Result::ok);
        Latency { median, sigma, spread }
    }

    /// Always `delay`, as before latencies had a spread.
    pub fn fixed(delay: Duration) -> Latency {
        Latency::new(delay, 0.0)
    }

    pub fn median(&self) -> Duration {
        self.median
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The mean, `median * exp(sigma² / 2)`: above the median, by the tail. What a writer with
    /// `w` writes in flight sees on average, so its rate is bounded by `w / mean`.
    pub fn mean(&self) -> Duration {
        self.median.mul_f64((self.sigma * self.sigma / 2.0).exp())
    }

    /// One delay drawn from `rng`: a seeded generator gives the same delays every run.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match &self.spread {
            Some(spread) => Duration::from_secs_f64(spread.sample(rng)),
            None => self.median,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    #[test]
    fn no_spread_is_the_median_every_time() {
        let mut rng = StdRng::seed_from_u64(7);
        let fixed = Latency::fixed(Duration::from_millis(50));
        assert!((0..100).all(|_| fixed.sample(&mut rng) == Duration::from_millis(50)));
        assert_eq!(fixed.mean(), Duration::from_millis(50));
        assert_eq!(Latency::ZERO.sample(&mut rng), Duration::ZERO);
        assert_eq!(Latency::new(Duration::ZERO, 1.0).sample(&mut rng), Duration::ZERO);
    }

    /// The samples' median and mean are the distribution's, and a seed repeats the samples.
    #[test]
    fn samples_follow_the_median_and_the_mean() {
        let latency = Latency::new(Duration::from_millis(50), 1.0);
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20_000).map(|_| latency.sample(&mut rng).as_secs_f64()).collect::<Vec<_>>()
        };
        let mut samples = draw(1);
        assert_eq!(samples, draw(1));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        assert!((median / 0.050 - 1.0).abs() < 0.05, "median {median}");
        let expected = latency.mean().as_secs_f64();
        assert!((expected / 0.050 - 0.5f64.exp()).abs() < 1e-6, "mean = median * exp(sigma² / 2)");
        assert!((mean / expected - 1.0).abs() < 0.05, "mean {mean}, expected {expected}");
    }
}
