//! PNG charts of a training job's artifacts, rendered in memory as encoded bytes.
//!
//! Three charts, each 900×540 pixels on a white background:
//! - [`distance_histogram_png`]: the anchor–positive and anchor–negative distance distributions that
//!   offline mining measured ([`DistanceHistogram`]), with the hard thresholds `t_pos` and `t_neg`
//!   and the valley between the modes ([`Thresholds`]) as vertical lines. Each distribution is
//!   normalised to a *density* (count ÷ (total × bin width)), so both integrate to 1: a catalogue
//!   has roughly ten other-label pairs for every same-label pair, and on raw counts the positive
//!   peak would be a flat line at the bottom. The two are drawn as semi-transparent filled steps
//!   with an opaque outline, so where they overlap — the pairs that are hard on either side —
//!   stays visible.
//! - [`line_chart_png`]: several named lines, e.g. MAP@R against training steps, one per mining
//!   mode.
//! - [`loss_curve_png`]: the raw per-step loss (light) under its trailing moving average (dark).
//!   Non-finite losses are skipped (and counted on the chart); long runs are reduced to a per-column
//!   minimum/maximum envelope before drawing, so spikes survive and 100,000 steps draw as fast as
//!   2,000.
//!
//! Text is set in DejaVu Sans, embedded in the binary from the `dejavu` crate: nothing is read from
//! the system, so the charts render the same in a container without fonts. It is registered with
//! plotters' `ab_glyph` support as the `sans-serif` family, which plotters uses to measure text for
//! its layout; the glyphs themselves are drawn by `ChartBackend`, a bitmap backend that places
//! each glyph at its sub-pixel pen position with its side bearing (plotters 0.3.7's own `ab_glyph`
//! drawing drops the bearing, which leaves visibly uneven letter spacing). The DejaVu fonts are
//! under the Bitstream Vera licence (DejaVu's changes are public domain); a binary distribution
//! carries that notice.
//!
//! Rendering is deterministic: the same input gives byte-identical PNGs (no clocks, no random
//! colours, no hash-ordered iteration), so artifacts can be compared and cached by content. The
//! legend goes into whichever upper/lower corner of the plot holds the least ink.

use std::ops::Range;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont, point};
use anyhow::{Context, bail};
use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};

use super::offline::{DistanceHistogram, Thresholds};

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 900;
/// Height of every chart, in pixels.
pub const HEIGHT: u32 = 540;

/// The family every text style names; it is the embedded DejaVu Sans (see the module docs).
const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 24;
const AXIS_DESC_SIZE: u32 = 18;
const TICK_SIZE: u32 = 14;
const LEGEND_SIZE: u32 = 15;

/// Above this many points a line is reduced to a minimum/maximum envelope of [`ENVELOPE_BUCKETS`].
const MAX_DRAWN_POINTS: usize = 4_000;
/// Buckets of the envelope: about two per pixel column of the plotting area.
const ENVELOPE_BUCKETS: usize = 1_600;
/// Lines with at most this many points also get a dot at each point.
const MAX_MARKED_POINTS: usize = 40;

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
/// Raw per-step loss.
const RAW_LOSS_COLOR: RGBColor = RGBColor(166, 206, 227);
/// Moving average of the loss.
const AVERAGE_LOSS_COLOR: RGBColor = RGBColor(8, 69, 148);
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
                .color(&T_NEG_COLOR)
                .pos(Pos::new(HPos::Right, VPos::Top));
            root.draw(&Text::new(text, (WIDTH as i32 - 20, 8), style))?;
        }
        draw_legend(&mut chart, legend_position)
    })
}

type Chart<'a, 'b> = ChartContext<'a, ChartBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws into a fresh white [`WIDTH`]×[`HEIGHT`] RGB canvas and encodes it as PNG.
fn render<F>(draw: F) -> anyhow::Result<Vec<u8>>
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

/// The embedded DejaVu Sans, registered with plotters as [`FONT`] once per process.
fn ensure_font() -> anyhow::Result<FontRef<'static>> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let bytes = dejavu::sans::regular();
    let registered = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, bytes).is_ok());
    if !registered {
        bail!("the embedded DejaVu Sans font could not be registered");
    }
    FontRef::try_from_slice(bytes).context("parsing the embedded DejaVu Sans font")
}

/// DejaVu Sans' cap height (1493 units) as a fraction of the ascent-to-descent height (1901 + 483
/// units) that a `PxScale` of the text size spans.
const CAP_HEIGHT: f32 = 1493.0 / 2384.0;

/// plotters' bitmap backend with its own text drawing (see the module docs); everything else is
/// passed through.
///
/// A text box is as tall as plotters' `ab_glyph` measure makes it (size ÷ 1.24), with the cap
/// height at its top and the baseline [`CAP_HEIGHT`] × size below, so plotters' layout (legend rows,
/// label areas) and the drawn glyphs agree; descenders hang a little below the box.
struct ChartBackend<'a> {
    bitmap: BitMapBackend<'a>,
    font: FontRef<'static>,
}

impl ChartBackend<'_> {
    /// Width (pen advance with kerning) and height of `text`'s box at `size` pixels.
    fn text_box(&self, text: &str, size: f32) -> (f32, f32) {
        let font = self.font.as_scaled(size);
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                width += font.kern(previous, id);
            }
            width += font.h_advance(id);
            previous = Some(id);
        }
        (width, size / 1.24)
    }
}

impl DrawingBackend for ChartBackend<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: plotters_backend::BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (width, height) = self.text_box(text, style.size() as f32);
        Ok((width.ceil() as u32, height.ceil() as u32))
    }

    fn draw_text<S: plotters_backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size() as f32;
        let (width, height) = self.text_box(text, size);
        let anchor = style.anchor();
        let left = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let top = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let baseline = top + CAP_HEIGHT * size;

        // Coverage of every glyph pixel, relative to `pos` before rotation.
        let font = self.font.as_scaled(size);
        let mut coverage = Vec::new();
        let mut pen = left;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                pen += font.kern(previous, id);
            }
            if let Some(outline) = font.outline_glyph(id.with_scale_and_position(size, point(pen, baseline))) {
                let bounds = outline.px_bounds();
                let (x0, y0) = (bounds.min.x as i32, bounds.min.y as i32);
                outline.draw(|x, y, c| {
                    if c > 0.0 {
                        coverage.push((x0 + x as i32, y0 + y as i32, c.min(1.0)));
                    }
                });
            }
            pen += font.h_advance(id);
            previous = Some(id);
        }

        let transform = style.transform();
        let (w, h) = self.get_size();
        for (x, y, c) in coverage {
            let (x, y) = transform.transform(x, y);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                self.bitmap.draw_pixel((x, y), BackendColor { alpha: color.alpha * f64::from(c), rgb: color.rgb })?;
            }
        }
        Ok(())
    }
}

/// A chart with a title, axis descriptions and a light grid over the given ranges.
fn cartesian<'a, 'b>(
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

fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> anyhow::Result<()> {
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
fn note(root: &DrawingArea<ChartBackend<'_>, Shift>, text: &str) -> anyhow::Result<()> {
    let style = TextStyle::from((FONT, AXIS_DESC_SIZE).into_font())
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(text, (WIDTH as i32 / 2, HEIGHT as i32 / 2), style))?;
    Ok(())
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

/// The trailing mean over the last `window` steps (the finite values among them) at every step that
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

/// `points` (sorted by `x`) as drawn: unchanged up to [`MAX_DRAWN_POINTS`], else the minimum and
/// maximum of each of [`ENVELOPE_BUCKETS`] equal runs, in their original order.
fn envelope(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
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
fn path_samples(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points.windows(2).flat_map(|w| {
        (0..8).map(move |i| {
            let t = f64::from(i) / 8.0;
            (w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1))
        })
    })
}

/// Points under a step outline, ten per bin and height, for [`legend_corner`] to count.
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

/// The corner of the plot whose box (45 % wide, 40 % high) holds the fewest of `ink`'s points;
/// only the upper corners when `upper_only` (a filled histogram always fills its lower corners).
fn legend_corner(
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
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `[lo, hi]` widened by `fraction` of its span on each side; a single value gets a unit-ish span.
fn padded(lo: f64, hi: f64, fraction: f64) -> Range<f64> {
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
fn tick_label(value: &f64) -> String {
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
fn group_thousands(value: u64) -> String {
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

    use image::RgbImage;

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("valid PNG").to_rgb8()
    }

    fn has_color(image: &RgbImage, color: RGBColor) -> bool {
        image.pixels().any(|p| p.0 == [color.0, color.1, color.2])
    }

    /// Writes `png` to `$LOOKALIKE_PLOT_DIR/name` when that variable is set, to look at by eye.
    fn maybe_save(name: &str, png: &[u8]) {
        if let Some(dir) = std::env::var_os("LOOKALIKE_PLOT_DIR") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create plot dir");
            std::fs::write(dir.join(name), png).expect("write plot");
        }
    }

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
    fn envelope_keeps_extremes_of_long_runs() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (f64::from(i), 1.0)).collect();
        points[54_321].1 = 9.0;
        let drawn = envelope(&points);
        assert!(drawn.len() <= ENVELOPE_BUCKETS * 2);
        assert!(drawn.contains(&(54_321.0, 9.0)));
        assert!(drawn.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn same_input_gives_identical_bytes() {
        let (histogram, thresholds) = sample_histogram();
        let a = distance_histogram_png(&histogram, &thresholds, "same").unwrap();
        let b = distance_histogram_png(&histogram, &thresholds, "same").unwrap();
        assert_eq!(a, b);
        let series = sample_series();
        assert_eq!(line_chart_png("t", "x", "y", &series).unwrap(), line_chart_png("t", "x", "y", &series).unwrap());
        let losses = sample_losses(10_000);
        assert_eq!(loss_curve_png(&losses, "t").unwrap(), loss_curve_png(&losses, "t").unwrap());
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
