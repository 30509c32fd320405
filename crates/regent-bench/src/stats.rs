//! Percentiles and histograms over raw samples.

use std::time::Duration;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
}

impl Latency {
    /// Percentiles (nearest rank) of samples in nanoseconds; sorts them.
    pub fn of(samples_ns: &mut [u64]) -> Latency {
        samples_ns.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(rank(samples_ns, 0.50)),
            p90: us(rank(samples_ns, 0.90)),
            p99: us(rank(samples_ns, 0.99)),
            max: us(samples_ns.last().copied().unwrap_or(0)),
            n: samples_ns.len(),
        }
    }
}

/// The nearest-rank percentile `q` (0..=1) of sorted samples; 0 when empty.
fn rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// The median of a list of values (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Counts of events per bin of `bin` over `[from, to)`.
pub fn histogram(events: &[Duration], from: Duration, to: Duration, bin: Duration) -> Vec<u64> {
    if to <= from || bin.is_zero() {
        return Vec::new();
    }
    let bins = ((to - from).as_secs_f64() / bin.as_secs_f64()).floor() as usize;
    let mut counts = vec![0u64; bins];
    for t in events {
        if *t < from {
            continue;
        }
        let i = ((*t - from).as_secs_f64() / bin.as_secs_f64()) as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    counts
}

/// Peak and mean of a histogram.
pub fn peak_and_mean(counts: &[u64]) -> (u64, f64) {
    let peak = counts.iter().copied().max().unwrap_or(0);
    let mean = if counts.is_empty() {
        0.0
    } else {
        counts.iter().sum::<u64>() as f64 / counts.len() as f64
    };
    (peak, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::of(&mut v);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p90, 90.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        assert_eq!(Latency::of(&mut []).p50, 0.0);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn histogram_bins_events() {
        let ms = Duration::from_millis;
        let events = [ms(5), ms(15), ms(16), ms(35), ms(200)];
        let h = histogram(&events, ms(10), ms(40), ms(10));
        assert_eq!(h, vec![2, 0, 1]);
        assert_eq!(peak_and_mean(&h), (2, 1.0));
    }
}
