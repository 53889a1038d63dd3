//! An SVG backend that measures text without a font.
//!
//! plotters lays out axis labels and titles by asking the backend how big a
//! text is, and the SVG backend answers from the registered font. Without a
//! font that fails, although SVG text itself is drawn by the viewer. This
//! wrapper answers from an estimate instead, so SVG charts never depend on a
//! font being installed, and the same run always gives the same SVG bytes
//! whatever fonts the machine has.

use plotters::backend::SVGBackend;
use plotters::prelude::DrawingBackend;
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// [`SVGBackend`] with font-free text measurement; everything else is
/// passed through unchanged.
pub(crate) struct FontFreeSvg<'a> {
    inner: SVGBackend<'a>,
}

impl<'a> FontFreeSvg<'a> {
    pub(crate) fn with_string(buf: &'a mut String, size: (u32, u32)) -> Self {
        FontFreeSvg {
            inner: SVGBackend::with_string(buf, size),
        }
    }
}

/// Estimated size of `text` at `size` pixels in a proportional sans-serif
/// face. The SVG backend writes `font-size = size / 1.24`; widths are per
/// character class of DejaVu Sans and Liberation Sans, rounded up slightly
/// so that estimated boxes rather overlap less than more.
pub(crate) fn estimate(text: &str, size: f64) -> (u32, u32) {
    let em = size / 1.24;
    let width: f64 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' | 'I' => 0.30,
            ' ' | 'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '/' | '-' => 0.40,
            'm' | 'w' | 'M' | 'W' | '%' | '@' => 0.90,
            c if c.is_ascii_uppercase() => 0.70,
            c if c.is_ascii_digit() => 0.64,
            _ => 0.60,
        })
        .sum();
    ((width * em).ceil() as u32, em.ceil() as u32)
}

impl DrawingBackend for FontFreeSvg<'_> {
    type ErrorType = std::io::Error;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_text(text, style, pos)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok(estimate(text, style.size()))
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }
}
