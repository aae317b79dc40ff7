//! The bitmap backend the charts draw on, with its own text drawing, and the embedded font.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont, point};
use anyhow::{Context, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{FontStyle, register_font};
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};

/// The family every text style names; it is the embedded DejaVu Sans (see the module docs of `plot`).
pub(super) const FONT: &str = "sans-serif";

/// The embedded DejaVu Sans, registered with plotters as [`FONT`] once per process.
pub(super) fn ensure_font() -> anyhow::Result<FontRef<'static>> {
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
pub(super) struct ChartBackend<'a> {
    pub(super) bitmap: BitMapBackend<'a>,
    pub(super) font: FontRef<'static>,
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
