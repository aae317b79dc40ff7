//! PNG charts of a training job's artifacts, rendered in memory as encoded bytes.
//!
//! Three charts, each 900×540 pixels on a white background:
//! - [`distance_histogram_png`]: the anchor–positive and anchor–negative distance distributions that
//!   offline mining measured ([`DistanceHistogram`](super::DistanceHistogram)), with the hard thresholds `t_pos` and `t_neg`
//!   and the valley between the modes ([`Thresholds`](super::Thresholds)) as vertical lines. Each distribution is
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
//!
//! One file per chart (`histogram`, `line_chart`, `loss_curve`) over the shared canvas
//! (`canvas`: axes, legend, ranges, tick labels) and its text-drawing backend (`backend`).

mod backend;
mod canvas;
mod histogram;
mod line_chart;
mod loss_curve;

pub use canvas::{HEIGHT, WIDTH};
pub use histogram::distance_histogram_png;
pub use line_chart::{Series, line_chart_png};
pub use loss_curve::loss_curve_png;

/// Helpers the charts' tests share: decoding, colour checks and saving charts to look at.
#[cfg(test)]
mod testing {
    use image::RgbImage;
    use plotters::style::RGBColor;

    pub(super) fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("valid PNG").to_rgb8()
    }

    pub(super) fn has_color(image: &RgbImage, color: RGBColor) -> bool {
        image.pixels().any(|p| p.0 == [color.0, color.1, color.2])
    }

    /// Writes `png` to `$LOOKALIKE_PLOT_DIR/name` when that variable is set, to look at by eye.
    pub(super) fn maybe_save(name: &str, png: &[u8]) {
        if let Some(dir) = std::env::var_os("LOOKALIKE_PLOT_DIR") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create plot dir");
            std::fs::write(dir.join(name), png).expect("write plot");
        }
    }
}
