//! What every chart shares: the canvas and its PNG encoding, axes and grid, the legend and the
//! corner it goes in, value ranges, the reduction of long lines, and tick labels.

use std::ops::Range;

use anyhow::Context;
use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::backend::{ChartBackend, FONT, ensure_font};

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 900;
/// Height of every chart, in pixels.
pub const HEIGHT: u32 = 540;

/// Text sizes, in pixels.
pub(super) const TITLE_SIZE: u32 = 24;
pub(super) const AXIS_DESC_SIZE: u32 = 18;
pub(super) const TICK_SIZE: u32 = 14;
pub(super) const LEGEND_SIZE: u32 = 15;

/// Above this many points a line is reduced to a minimum/maximum envelope of [`ENVELOPE_BUCKETS`].
pub(super) const MAX_DRAWN_POINTS: usize = 4_000;
/// Buckets of the envelope: about two per pixel column of the plotting area.
pub(super) const ENVELOPE_BUCKETS: usize = 1_600;

pub(super) type Chart<'a, 'b> = ChartContext<'a, ChartBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws into a fresh white [`WIDTH`]×[`HEIGHT`] RGB canvas and encodes it as PNG.
pub(super) fn render<F>(draw: F) -> anyhow::Result<Vec<u8>>
where
    F: FnOnce(&DrawingArea<ChartBackend<'_>, Shift>) -> anyhow::Result<()>,
{
    let font = ensure_font()?;
    let mut pixels = vec![0_u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let bitmap = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut pixels, (WIDTH, HEIGHT))?;
        let root = ChartBackend { bitmap, font }.into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&pixels, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .context("encoding chart as PNG")?;
    Ok(png)
}

/// A chart with a title, axis descriptions and a light grid over the given ranges.
pub(super) fn cartesian<'a, 'b>(
    root: &'a DrawingArea<ChartBackend<'b>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
    x_ticks: usize,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, TITLE_SIZE))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    chart
        .configure_mesh()
        .x_labels(x_ticks)
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .label_style((FONT, TICK_SIZE))
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    Ok(chart)
}

pub(super) fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .margin(10)
        .legend_area_size(28)
        .label_font((FONT, LEGEND_SIZE))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

/// A grey line of text in the middle of the canvas, for charts with nothing to draw.
pub(super) fn note(root: &DrawingArea<ChartBackend<'_>, Shift>, text: &str) -> anyhow::Result<()> {
    let style = TextStyle::from((FONT, AXIS_DESC_SIZE).into_font())
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(text, (WIDTH as i32 / 2, HEIGHT as i32 / 2), style))?;
    Ok(())
}

/// `points` (sorted by `x`) as drawn: unchanged up to [`MAX_DRAWN_POINTS`], else the minimum and
/// maximum of each of [`ENVELOPE_BUCKETS`] equal runs, in their original order.
pub(super) fn envelope(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_DRAWN_POINTS {
        return points.to_vec();
    }
    let mut drawn = Vec::with_capacity(ENVELOPE_BUCKETS * 2);
    for bucket in 0..ENVELOPE_BUCKETS {
        let start = bucket * points.len() / ENVELOPE_BUCKETS;
        let end = (bucket + 1) * points.len() / ENVELOPE_BUCKETS;
        let run = &points[start..end];
        let Some(first) = run.first() else { continue };
        let (mut low, mut high) = (first, first);
        for point in run {
            if point.1 < low.1 {
                low = point;
            }
            if point.1 > high.1 {
                high = point;
            }
        }
        if low.0 <= high.0 {
            drawn.extend([*low, *high]);
        } else {
            drawn.extend([*high, *low]);
        }
    }
    drawn.dedup();
    drawn
}

/// Points along a polyline, eight per segment, for [`legend_corner`] to count.
pub(super) fn path_samples(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points.windows(2).flat_map(|w| {
        (0..8).map(move |i| {
            let t = f64::from(i) / 8.0;
            (w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1))
        })
    })
}

/// The corner of the plot whose box (45 % wide, 40 % high) holds the fewest of `ink`'s points;
/// only the upper corners when `upper_only` (a filled histogram always fills its lower corners).
pub(super) fn legend_corner(
    ink: &[(f64, f64)],
    x_range: &Range<f64>,
    y_range: &Range<f64>,
    upper_only: bool,
) -> SeriesLabelPosition {
    let (width, height) = (x_range.end - x_range.start, y_range.end - y_range.start);
    let left = x_range.start + 0.45 * width;
    let right = x_range.end - 0.45 * width;
    let below = y_range.start + 0.40 * height;
    let above = y_range.end - 0.40 * height;
    let mut corners = vec![
        (SeriesLabelPosition::UpperRight, right, f64::INFINITY, above, f64::INFINITY),
        (SeriesLabelPosition::UpperLeft, f64::NEG_INFINITY, left, above, f64::INFINITY),
    ];
    if !upper_only {
        corners.push((SeriesLabelPosition::LowerRight, right, f64::INFINITY, f64::NEG_INFINITY, below));
        corners.push((SeriesLabelPosition::LowerLeft, f64::NEG_INFINITY, left, f64::NEG_INFINITY, below));
    }
    let mut best = SeriesLabelPosition::UpperRight;
    let mut fewest = usize::MAX;
    for (position, x0, x1, y0, y1) in corners {
        let count = ink.iter().filter(|(x, y)| *x >= x0 && *x <= x1 && *y >= y0 && *y <= y1).count();
        if count < fewest {
            fewest = count;
            best = position;
        }
    }
    best
}

/// The smallest and largest of the finite values, if any.
pub(super) fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `[lo, hi]` widened by `fraction` of its span on each side; a single value gets a unit-ish span.
pub(super) fn padded(lo: f64, hi: f64, fraction: f64) -> Range<f64> {
    let span = hi - lo;
    if span > 0.0 {
        (lo - span * fraction)..(hi + span * fraction)
    } else {
        let half = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        (lo - half)..(hi + half)
    }
}

/// A tick value as short text: whole numbers without decimals (`10,000`, not `10000.0`), others
/// with at most four decimals and no trailing zeros.
pub(super) fn tick_label(value: &f64) -> String {
    let value = *value;
    let rounded = value.round();
    if (value - rounded).abs() <= 1e-9 * value.abs().max(1.0) && rounded.abs() < 1e15 {
        let sign = if rounded < 0.0 { "-" } else { "" };
        return format!("{sign}{}", group_thousands(rounded.abs() as u64));
    }
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

/// `1234567` as `1,234,567`.
pub(super) fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_extremes_of_long_runs() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (f64::from(i), 1.0)).collect();
        points[54_321].1 = 9.0;
        let drawn = envelope(&points);
        assert!(drawn.len() <= ENVELOPE_BUCKETS * 2);
        assert!(drawn.contains(&(54_321.0, 9.0)));
        assert!(drawn.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(&10_000.0), "10,000");
        assert_eq!(tick_label(&0.0), "0");
        assert_eq!(tick_label(&-0.0), "0");
        assert_eq!(tick_label(&0.55), "0.55");
        assert_eq!(tick_label(&-2.5), "-2.5");
        assert_eq!(tick_label(&0.000_01), "0");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }
}
