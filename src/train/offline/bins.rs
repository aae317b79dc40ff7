//! The fine distance bins: their edges, quantiles read from them, the coarser display histogram
//! and the valley between its modes.

use super::{DistanceHistogram, MAX_DISTANCE, QUANTILE_BINS};

pub(super) fn fine_bin(d: f32) -> usize {
    ((d * (QUANTILE_BINS as f32 / MAX_DISTANCE)) as usize).min(QUANTILE_BINS - 1)
}

pub(super) fn fine_edge(bin: usize) -> f32 {
    bin as f32 * (MAX_DISTANCE / QUANTILE_BINS as f32)
}

/// The first fine bin whose cumulative count reaches `max(1, ⌈q·n⌉)` (`bins` holds `n > 0` counts).
pub(super) fn quantile_bin(bins: &[u64], q: f32) -> usize {
    let total: u64 = bins.iter().sum();
    let target = ((f64::from(q) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bin, &count) in bins.iter().enumerate() {
        seen += count;
        if seen >= target {
            return bin;
        }
    }
    bins.len() - 1
}

/// Groups the occupied fine bins into at most `bins` display bins (see the module docs).
pub(super) fn display_histogram(positive: &[u64], negative: &[u64], bins: usize) -> DistanceHistogram {
    let occupied = |bin: &usize| positive[*bin] + negative[*bin] > 0;
    let low = (0..QUANTILE_BINS).find(occupied).unwrap_or(0);
    let high = (0..QUANTILE_BINS).rev().find(occupied).unwrap_or(QUANTILE_BINS - 1).max(low);
    let span = high - low + 1;
    let groups = bins.min(span);
    let boundaries: Vec<usize> = (0..=groups).map(|group| low + group * span / groups).collect();
    let sum_range = |counts: &[u64]| boundaries.windows(2).map(|pair| counts[pair[0]..pair[1]].iter().sum()).collect();
    DistanceHistogram {
        bin_edges: boundaries.iter().map(|&bin| fine_edge(bin)).collect(),
        positive_counts: sum_range(positive),
        negative_counts: sum_range(negative),
    }
}

/// The valley between the positive and negative modes (see the module docs).
pub(super) fn valley(histogram: &DistanceHistogram) -> Option<f32> {
    let mode = |counts: &[u64]| {
        counts.iter().enumerate().fold(0, |best, (bin, &count)| if count > counts[best] { bin } else { best })
    };
    let (positive_mode, negative_mode) = (mode(&histogram.positive_counts), mode(&histogram.negative_counts));
    if positive_mode >= negative_mode {
        return None;
    }
    let positive_total = histogram.positive_counts.iter().sum::<u64>() as f64;
    let negative_total = histogram.negative_counts.iter().sum::<u64>() as f64;
    let edges = &histogram.bin_edges;
    let density = |bin: usize| {
        let width = f64::from(edges[bin + 1] - edges[bin]);
        (histogram.positive_counts[bin] as f64 / positive_total
            + histogram.negative_counts[bin] as f64 / negative_total)
            / width
    };
    let lowest = (positive_mode..=negative_mode)
        .fold(positive_mode, |best, bin| if density(bin) < density(best) { bin } else { best });
    Some((edges[lowest] + edges[lowest + 1]) / 2.0)
}
