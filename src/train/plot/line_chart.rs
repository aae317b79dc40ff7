//! Several named lines against shared axes, e.g. MAP@R against training steps per mining mode.

use plotters::prelude::*;

use super::canvas::{cartesian, draw_legend, envelope, legend_corner, min_max, note, padded, path_samples, render};

/// Lines with at most this many points also get a dot at each point.
const MAX_MARKED_POINTS: usize = 40;

/// Colours of [`line_chart_png`]'s series, in order, repeating after the last (tab10).
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named line of a [`line_chart_png`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// `(x, y)` points; drawn in order of `x`, points with a non-finite coordinate left out.
    pub points: Vec<(f64, f64)>,
}

/// Renders `series` as coloured lines against shared axes, with a legend naming each.
///
/// Points with a non-finite coordinate are left out and each line is drawn in order of `x`; a
/// series with at most 40 points also gets a dot per point. Colours follow the order of `series`
/// (ten, then repeating). With no finite point at all the chart still renders, with a note.
pub fn line_chart_png(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> anyhow::Result<Vec<u8>> {
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let mut points: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        })
        .collect();
    let all = || lines.iter().flatten();
    let x_range = min_max(all().map(|p| p.0)).map_or(0.0..1.0, |(lo, hi)| padded(lo, hi, 0.02));
    let y_range = min_max(all().map(|p| p.1)).map_or(0.0..1.0, |(lo, hi)| padded(lo, hi, 0.06));
    let drawn: Vec<Vec<(f64, f64)>> = lines.iter().map(|points| envelope(points)).collect();
    let ink: Vec<(f64, f64)> = drawn.iter().flat_map(|points| path_samples(points)).collect();
    let legend_position = legend_corner(&ink, &x_range, &y_range, false);

    render(|root| {
        let mut chart = cartesian(root, title, x_label, y_label, &x_range, &y_range, 10)?;
        for (index, (s, points)) in series.iter().zip(&drawn).enumerate() {
            let color = SERIES_COLORS[index % SERIES_COLORS.len()];
            let marked = lines[index].len() <= MAX_MARKED_POINTS;
            if marked {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(points.clone(), color.stroke_width(2))))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    let dot = Circle::new((0, 0), if marked { 3 } else { 0 }, color.filled());
                    EmptyElement::at((x + 10, y))
                        + dot
                        + PathElement::new(vec![(-10, 0), (10, 0)], color.stroke_width(2))
                });
        }
        if lines.iter().all(Vec::is_empty) {
            note(root, "no data points")?;
        }
        if series.is_empty() { Ok(()) } else { draw_legend(&mut chart, legend_position) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::plot::testing::{decode, has_color, maybe_save};
    use crate::train::plot::{HEIGHT, WIDTH};

    fn sample_series() -> Vec<Series> {
        let steps: [f64; 7] = [0.0, 500.0, 1_000.0, 1_500.0, 2_000.0, 2_500.0, 3_000.0];
        let curve = |start: f64, gain: f64| -> Vec<(f64, f64)> {
            steps.iter().map(|&s| (s, start + gain * (1.0 - (-s / 900.0).exp()))).collect()
        };
        vec![
            Series { name: "batch-hard".into(), points: curve(0.41, 0.22) },
            Series { name: "batch-all".into(), points: curve(0.41, 0.17) },
            Series { name: "semi-hard".into(), points: curve(0.41, 0.19) },
            Series { name: "random".into(), points: curve(0.41, 0.06) },
        ]
    }

    #[test]
    fn line_chart_draws_each_series_in_its_colour() {
        let series = sample_series();
        let png = line_chart_png("MAP@R on held-out items", "step", "MAP@R", &series).unwrap();
        maybe_save("line_chart.png", &png);
        let image = decode(&png);
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        for color in &SERIES_COLORS[..series.len()] {
            assert!(has_color(&image, *color), "no pixel of {color:?}");
        }
    }

    #[test]
    fn line_chart_copes_with_no_series_empty_series_and_non_finite_points() {
        let image = decode(&line_chart_png("nothing", "x", "y", &[]).unwrap());
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let odd = vec![
            Series { name: "empty".into(), points: Vec::new() },
            Series { name: "one".into(), points: vec![(1.0, 0.5)] },
            Series {
                name: "holes".into(),
                points: vec![(0.0, f64::NAN), (1.0, 0.2), (f64::INFINITY, 1.0), (2.0, 0.3)],
            },
        ];
        let image = decode(&line_chart_png("odd", "x", "y", &odd).unwrap());
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        assert!(has_color(&image, SERIES_COLORS[2]));
    }

    #[test]
    fn same_input_gives_identical_bytes() {
        let series = sample_series();
        assert_eq!(line_chart_png("t", "x", "y", &series).unwrap(), line_chart_png("t", "x", "y", &series).unwrap());
    }
}
