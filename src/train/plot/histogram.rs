//! The distance histogram of offline mining: both densities, the thresholds and the valley.

use anyhow::bail;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::backend::FONT;
use super::canvas::{
    LEGEND_SIZE, cartesian, draw_legend, group_thousands, legend_corner, min_max, note, padded, render,
};
use crate::train::offline::{DistanceHistogram, Thresholds};

/// Anchor–positive distances (tab:blue).
const POSITIVE_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Anchor–negative distances (tab:orange).
const NEGATIVE_COLOR: RGBColor = RGBColor(255, 127, 14);
/// `t_pos`: a darker blue, read with the positives.
const T_POS_COLOR: RGBColor = RGBColor(8, 48, 107);
/// `t_neg`: a dark red-brown, read with the negatives.
const T_NEG_COLOR: RGBColor = RGBColor(166, 30, 30);
/// The valley between the modes (dashed); not a grey, which anti-aliased black text also makes.
const VALLEY_COLOR: RGBColor = RGBColor(84, 39, 143);
/// Opacity of a histogram's fill; its outline is opaque.
const FILL_OPACITY: f64 = 0.35;

/// Renders the anchor–positive and anchor–negative distance distributions of offline mining as a
/// PNG, each normalised to a density, with `t_pos`, `t_neg` and the valley (if any) as labelled
/// vertical lines.
///
/// Errors when the histogram is inconsistent (counts not one fewer than edges, edges not finite and
/// strictly increasing) or drawing fails. A histogram without bins or without pairs still renders,
/// with a note saying so.
pub fn distance_histogram_png(
    histogram: &DistanceHistogram,
    thresholds: &Thresholds,
    title: &str,
) -> anyhow::Result<Vec<u8>> {
    let edges: Vec<f64> = histogram.bin_edges.iter().map(|&e| f64::from(e)).collect();
    let bins = edges.len().saturating_sub(1);
    if histogram.positive_counts.len() != bins || histogram.negative_counts.len() != bins {
        bail!(
            "distance histogram has {} edges but {} positive and {} negative counts (want one fewer than edges)",
            edges.len(),
            histogram.positive_counts.len(),
            histogram.negative_counts.len()
        );
    }
    if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
        bail!("distance histogram edges must be finite and strictly increasing");
    }
    let positive = densities(&edges, &histogram.positive_counts);
    let negative = densities(&edges, &histogram.negative_counts);
    let positive_total: u64 = histogram.positive_counts.iter().sum();
    let negative_total: u64 = histogram.negative_counts.iter().sum();

    let lines = threshold_lines(thresholds);
    // Without bins, the whole range of unit-sphere distances, [0, 2].
    let fallback: &[f64] = if edges.is_empty() { &[0.0, 2.0] } else { &[] };
    let x_values = edges.iter().chain(fallback).copied().chain(lines.iter().map(|line| line.value));
    let x_range = min_max(x_values).map_or(0.0..2.0, |(lo, hi)| padded(lo, hi, 0.03));
    let peak = positive.iter().chain(&negative).fold(0.0_f64, |max, &d| max.max(d));
    // Head room above the highest peak for the threshold labels.
    let y_range = 0.0..if peak > 0.0 { peak * 1.15 } else { 1.0 };

    let positive_outline = step_outline(&edges, &positive);
    let negative_outline = step_outline(&edges, &negative);
    let ink: Vec<(f64, f64)> = filled_samples(&positive_outline).chain(filled_samples(&negative_outline)).collect();
    let legend_position = legend_corner(&ink, &x_range, &y_range, true);

    render(|root| {
        let mut chart = cartesian(root, title, "distance (unit-sphere Euclidean)", "density", &x_range, &y_range, 10)?;

        for (outline, color, name, total) in [
            (&positive_outline, POSITIVE_COLOR, "anchor–positive", positive_total),
            (&negative_outline, NEGATIVE_COLOR, "anchor–negative", negative_total),
        ] {
            if outline.is_empty() {
                continue;
            }
            chart.draw_series(std::iter::once(Polygon::new(outline.clone(), color.mix(FILL_OPACITY).filled())))?;
            chart
                .draw_series(std::iter::once(PathElement::new(outline.clone(), color.stroke_width(2))))?
                .label(format!("{name} ({} pairs)", group_thousands(total)))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 20, y + 6)], ShapeStyle::from(color.mix(FILL_OPACITY)).filled())
                        .into_dyn()
                });
        }

        for line in &lines {
            let points = vec![(line.value, 0.0), (line.value, y_range.end)];
            let style = line.color.stroke_width(2);
            let series = if line.dashed {
                chart.draw_series(std::iter::once(DashedPathElement::new(points, 8, 5, style)))?
            } else {
                chart.draw_series(std::iter::once(PathElement::new(points, style)))?
            };
            let color = line.color;
            let dashed = line.dashed;
            series.label(format!("{} = {:.3}", line.name, line.value)).legend(move |(x, y)| {
                let style = color.stroke_width(2);
                if dashed {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 3, style).into_dyn()
                } else {
                    PathElement::new(vec![(x, y), (x + 20, y)], style).into_dyn()
                }
            });
        }
        // Labels after all lines, on a light box, so a neighbouring line does not cross them. Each
        // sits on the side of its line where the hard pairs are (the other side near the plot's edge),
        // one row lower than the last.
        let label_style = TextStyle::from((FONT, LEGEND_SIZE).into_font());
        let span = x_range.end - x_range.start;
        for (rank, line) in lines.iter().enumerate() {
            let top = y_range.end * (0.985 - 0.07 * rank as f64);
            let text = match line.side {
                Side::Right => format!("{} →", line.name),
                Side::Left => format!("← {}", line.name),
            };
            let on_right = match line.side {
                Side::Right => line.value < x_range.end - 0.12 * span,
                Side::Left => line.value < x_range.start + 0.12 * span,
            };
            let style = label_style.color(&line.color).pos(Pos::new(HPos::Left, VPos::Top));
            let (width, height) = root.estimate_text_size(&text, &style)?;
            let (width, height) = (width as i32, height as i32);
            let (left, right) = if on_right { (4, 8 + width) } else { (-8 - width, -4) };
            let text_x = left + 2;
            let background = Rectangle::new([(left, -2), (right, height + 4)], WHITE.mix(0.85).filled());
            chart.draw_series(std::iter::once(
                EmptyElement::at((line.value, top)) + background + Text::new(text, (text_x, 0), style),
            ))?;
        }

        if positive_total == 0 && negative_total == 0 {
            note(root, "no distances to show")?;
        }
        draw_legend(&mut chart, legend_position)
    })
}

/// Which side of a threshold the hard pairs lie on.
#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
}

struct ThresholdLine {
    name: &'static str,
    value: f64,
    color: RGBColor,
    dashed: bool,
    side: Side,
}

/// The finite thresholds as lines: hard positives at or beyond `t_pos`, hard negatives at or below
/// `t_neg`, and the valley (dashed) when there is one.
fn threshold_lines(thresholds: &Thresholds) -> Vec<ThresholdLine> {
    let mut lines = vec![
        ThresholdLine {
            name: "t_pos",
            value: f64::from(thresholds.positive),
            color: T_POS_COLOR,
            dashed: false,
            side: Side::Right,
        },
        ThresholdLine {
            name: "t_neg",
            value: f64::from(thresholds.negative),
            color: T_NEG_COLOR,
            dashed: false,
            side: Side::Left,
        },
    ];
    if let Some(valley) = thresholds.valley {
        lines.push(ThresholdLine {
            name: "valley",
            value: f64::from(valley),
            color: VALLEY_COLOR,
            dashed: true,
            side: Side::Right,
        });
    }
    lines.retain(|line| line.value.is_finite());
    lines
}

/// Count ÷ (total × bin width) per bin: a density integrating to 1, or all zeros without counts.
fn densities(edges: &[f64], counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return vec![0.0; counts.len()];
    }
    counts.iter().zip(edges.windows(2)).map(|(&count, w)| count as f64 / (total as f64 * (w[1] - w[0]))).collect()
}

/// The closed step outline of a histogram from its first to its last non-empty bin, starting and
/// ending on the baseline (so empty tails do not draw a line along the axis); empty without counts.
fn step_outline(edges: &[f64], heights: &[f64]) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (heights.iter().position(|&h| h > 0.0), heights.iter().rposition(|&h| h > 0.0))
    else {
        return Vec::new();
    };
    let mut outline = Vec::with_capacity((last - first + 1) * 2 + 2);
    outline.push((edges[first], 0.0));
    for bin in first..=last {
        outline.push((edges[bin], heights[bin]));
        outline.push((edges[bin + 1], heights[bin]));
    }
    outline.push((edges[last + 1], 0.0));
    outline
}

/// Points under a step outline, ten per bin and height, for `canvas::legend_corner` to count.
fn filled_samples(outline: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    // The outline's tops come in pairs (left edge, right edge) after the first baseline point.
    outline.get(1..outline.len().saturating_sub(1)).unwrap_or(&[]).chunks_exact(2).flat_map(|top| {
        let (left, right, height) = (top[0].0, top[1].0, top[0].1);
        (0..10).flat_map(move |i| {
            let x = left + (right - left) * (f64::from(i) + 0.5) / 10.0;
            (0..10).map(move |j| (x, height * (f64::from(j) + 0.5) / 10.0))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::plot::testing::{decode, has_color, maybe_save};
    use crate::train::plot::{HEIGHT, WIDTH};

    /// Two bumps like offline mining sees: few close positives, ten times as many far negatives.
    fn sample_histogram() -> (DistanceHistogram, Thresholds) {
        let bins = 64;
        let (lo, hi) = (0.2_f32, 1.8_f32);
        let bin_edges: Vec<f32> = (0..=bins).map(|i| lo + (hi - lo) * i as f32 / bins as f32).collect();
        let bump = |centre: f32, width: f32, total: f64| -> Vec<u64> {
            (0..bins)
                .map(|i| {
                    let x = (bin_edges[i] + bin_edges[i + 1]) / 2.0;
                    let z = f64::from((x - centre) / width);
                    (total * (-0.5 * z * z).exp()).round() as u64
                })
                .collect()
        };
        let histogram = DistanceHistogram {
            positive_counts: bump(0.7, 0.15, 400.0),
            negative_counts: bump(1.3, 0.18, 4_000.0),
            bin_edges,
        };
        let thresholds = Thresholds { positive: 0.912, negative: 0.905, valley: Some(0.975) };
        (histogram, thresholds)
    }

    #[test]
    fn histogram_draws_both_densities_and_threshold_lines() {
        let (histogram, thresholds) = sample_histogram();
        let png = distance_histogram_png(&histogram, &thresholds, "Offline mining: pretrained distances").unwrap();
        maybe_save("histogram.png", &png);
        let image = decode(&png);
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        for color in [POSITIVE_COLOR, NEGATIVE_COLOR, T_POS_COLOR, T_NEG_COLOR, VALLEY_COLOR] {
            assert!(has_color(&image, color), "no pixel of {color:?}");
        }
    }

    #[test]
    fn histogram_densities_integrate_to_one_whatever_the_counts() {
        let edges = [0.0, 0.5, 0.75, 1.0];
        for counts in [[1_u64, 2, 1], [100, 2_000, 10]] {
            let area: f64 =
                densities(&edges, &counts).iter().zip(edges.windows(2)).map(|(d, w)| d * (w[1] - w[0])).sum();
            assert!((area - 1.0).abs() < 1e-12, "area {area}");
        }
        assert_eq!(densities(&edges, &[0, 0, 0]), vec![0.0; 3]);
    }

    #[test]
    fn histogram_without_valley_or_bins_still_renders() {
        let (histogram, mut thresholds) = sample_histogram();
        thresholds.valley = None;
        let image = decode(&distance_histogram_png(&histogram, &thresholds, "no valley").unwrap());
        assert!(!has_color(&image, VALLEY_COLOR));
        assert!(has_color(&image, T_POS_COLOR));

        let empty =
            DistanceHistogram { bin_edges: Vec::new(), positive_counts: Vec::new(), negative_counts: Vec::new() };
        let png = distance_histogram_png(&empty, &thresholds, "empty").unwrap();
        maybe_save("histogram_empty.png", &png);
        let image = decode(&png);
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
    }

    #[test]
    fn histogram_rejects_inconsistent_lengths_and_edges() {
        let (mut histogram, thresholds) = sample_histogram();
        histogram.positive_counts.pop();
        assert!(distance_histogram_png(&histogram, &thresholds, "bad").is_err());

        let unsorted = DistanceHistogram {
            bin_edges: vec![0.0, 1.0, 0.5],
            positive_counts: vec![1, 1],
            negative_counts: vec![1, 1],
        };
        assert!(distance_histogram_png(&unsorted, &thresholds, "bad").is_err());
    }

    #[test]
    fn same_input_gives_identical_bytes() {
        let (histogram, thresholds) = sample_histogram();
        let a = distance_histogram_png(&histogram, &thresholds, "same").unwrap();
        let b = distance_histogram_png(&histogram, &thresholds, "same").unwrap();
        assert_eq!(a, b);
    }
}
