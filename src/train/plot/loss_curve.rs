//! A training run's per-step loss under its moving average.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::backend::FONT;
use super::canvas::{
    TICK_SIZE, WIDTH, cartesian, draw_legend, envelope, group_thousands, legend_corner, min_max, note, padded,
    path_samples, render,
};

/// Raw per-step loss.
const RAW_LOSS_COLOR: RGBColor = RGBColor(166, 206, 227);
/// Moving average of the loss.
const AVERAGE_LOSS_COLOR: RGBColor = RGBColor(8, 69, 148);
/// The note counting skipped non-finite losses (the dark red of the histogram's `t_neg`).
const SKIPPED_NOTE_COLOR: RGBColor = RGBColor(166, 30, 30);

/// Renders a training run's per-step loss: the raw values in a light colour under their trailing
/// moving average (window `max(1, n / 50)` steps, over the finite values in it) in a dark one.
///
/// `x` is the step (the index into `losses`). NaN and infinite losses are skipped and counted on the
/// chart; an empty slice renders empty axes with a note. Long runs are drawn through a per-column
/// minimum/maximum envelope, so spikes stay visible.
pub fn loss_curve_png(losses: &[f32], title: &str) -> anyhow::Result<Vec<u8>> {
    let window = (losses.len() / 50).max(1);
    let raw: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .filter(|(_, loss)| loss.is_finite())
        .map(|(step, &loss)| (step as f64, f64::from(loss)))
        .collect();
    let skipped = losses.len() - raw.len();
    let average = trailing_average(losses, window);

    let x_range = 0.0..(losses.len().saturating_sub(1).max(1) as f64);
    let y_range = match min_max(raw.iter().map(|p| p.1)) {
        // Losses are usually ≥ 0: keep zero on the axis so the eye reads the level right.
        Some((lo, hi)) => {
            let range = padded(lo.min(0.0), hi, 0.05);
            if lo >= 0.0 { 0.0..range.end } else { range }
        }
        None => 0.0..1.0,
    };
    let raw_drawn = envelope(&raw);
    let average_drawn = envelope(&average);
    let ink: Vec<(f64, f64)> = path_samples(&raw_drawn).chain(path_samples(&average_drawn)).collect();
    let legend_position = legend_corner(&ink, &x_range, &y_range, false);

    render(|root| {
        // Steps are whole: at most one tick per step, so a short run shows no fractional steps.
        let x_ticks = (x_range.end as usize + 1).clamp(2, 10);
        let mut chart = cartesian(root, title, "step", "loss", &x_range, &y_range, x_ticks)?;
        if raw.len() == 1 {
            chart.draw_series(raw.iter().map(|&p| Circle::new(p, 3, AVERAGE_LOSS_COLOR.filled())))?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(raw_drawn.clone(), RAW_LOSS_COLOR.stroke_width(1))))?
            .label("loss per step")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RAW_LOSS_COLOR.stroke_width(2)));
        chart
            .draw_series(std::iter::once(PathElement::new(average_drawn.clone(), AVERAGE_LOSS_COLOR.stroke_width(2))))?
            .label(format!(
                "moving average ({} step{})",
                group_thousands(window as u64),
                if window == 1 { "" } else { "s" }
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], AVERAGE_LOSS_COLOR.stroke_width(2)));
        if losses.is_empty() {
            note(root, "no steps yet")?;
        } else if raw.is_empty() {
            note(root, "no finite loss values")?;
        }
        if skipped > 0 {
            let text = format!(
                "{} non-finite loss value{} skipped",
                group_thousands(skipped as u64),
                if skipped == 1 { "" } else { "s" }
            );
            let style = TextStyle::from((FONT, TICK_SIZE).into_font())
                .color(&SKIPPED_NOTE_COLOR)
                .pos(Pos::new(HPos::Right, VPos::Top));
            root.draw(&Text::new(text, (WIDTH as i32 - 20, 8), style))?;
        }
        draw_legend(&mut chart, legend_position)
    })
}

/// has at least one finite value in its window.
fn trailing_average(values: &[f32], window: usize) -> Vec<(f64, f64)> {
    let mut sums = Vec::with_capacity(values.len() + 1);
    let mut counts = Vec::with_capacity(values.len() + 1);
    let (mut sum, mut count) = (0.0_f64, 0_usize);
    sums.push(sum);
    counts.push(count);
    for &value in values {
        if value.is_finite() {
            sum += f64::from(value);
            count += 1;
        }
        sums.push(sum);
        counts.push(count);
    }
    (0..values.len())
        .filter_map(|step| {
            let start = (step + 1).saturating_sub(window);
            let n = counts[step + 1] - counts[start];
            (n > 0).then(|| (step as f64, (sums[step + 1] - sums[start]) / n as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::plot::HEIGHT;
    use crate::train::plot::testing::{decode, has_color, maybe_save};

    fn sample_losses(n: usize) -> Vec<f32> {
        // A decaying loss with deterministic wiggle, no randomness.
        (0..n)
            .map(|i| {
                let t = i as f32 / n.max(1) as f32;
                0.05 + 0.9 * (-4.0 * t).exp() + 0.08 * ((i as f32 * 12.9898).sin() * 43_758.547).fract().abs()
            })
            .collect()
    }

    #[test]
    fn loss_curve_draws_raw_and_average() {
        let losses = sample_losses(3_000);
        let png = loss_curve_png(&losses, "Triplet loss").unwrap();
        maybe_save("loss_curve.png", &png);
        let image = decode(&png);
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        assert!(has_color(&image, RAW_LOSS_COLOR));
        assert!(has_color(&image, AVERAGE_LOSS_COLOR));
    }

    #[test]
    fn loss_curve_copes_with_empty_single_huge_and_non_finite_input() {
        let mut with_holes = sample_losses(500);
        with_holes[3] = f32::NAN;
        with_holes[10] = f32::INFINITY;
        with_holes[11] = f32::NEG_INFINITY;
        let huge = sample_losses(100_000);
        maybe_save("loss_curve_huge.png", &loss_curve_png(&huge, "100,000 steps").unwrap());
        maybe_save("loss_curve_nan.png", &loss_curve_png(&with_holes, "with NaN").unwrap());
        let cases = [Vec::new(), vec![0.7], vec![f32::NAN], vec![f32::NAN, 0.4, f32::NAN], with_holes, huge];
        for (case, losses) in cases.into_iter().enumerate() {
            let png = loss_curve_png(&losses, "loss").unwrap();
            maybe_save(&format!("loss_curve_case_{case}.png"), &png);
            let image = decode(&png);
            assert_eq!(image.dimensions(), (WIDTH, HEIGHT), "{} losses", losses.len());
        }
    }

    #[test]
    fn moving_average_skips_non_finite_values() {
        let average = trailing_average(&[1.0, f32::NAN, 3.0, 5.0], 2);
        assert_eq!(average, vec![(0.0, 1.0), (1.0, 1.0), (2.0, 3.0), (3.0, 4.0)]);
        assert!(trailing_average(&[f32::NAN], 1).is_empty());
    }

    #[test]
    fn same_input_gives_identical_bytes() {
        let losses = sample_losses(10_000);
        assert_eq!(loss_curve_png(&losses, "t").unwrap(), loss_curve_png(&losses, "t").unwrap());
    }
}
