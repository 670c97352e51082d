//! The tray's icons, drawn in code: an easel (a canvas on three legs) whose canvas colour says
//! the state, and for a running job a progress bar across the canvas in tenths.
//!
//! No image files: hosts take ARGB32 pixmaps over D-Bus, and drawing them here keeps the icon
//! in step with [`IconChoice`] without assets to ship or a theme to depend on.

use crate::state::{Glyph, IconChoice};

/// The sizes offered to the host; it picks the closest to its panel.
pub const SIZES: [u32; 2] = [22, 32];

type Rgba = [u8; 4];

const TRANSPARENT: Rgba = [0, 0, 0, 0];
const WOOD: Rgba = [0x8b, 0x5a, 0x2b, 0xff];
const FRAME: Rgba = [0x3a, 0x2a, 0x1a, 0xff];
const BAR_EMPTY: Rgba = [0x20, 0x20, 0x20, 0xc0];
const BAR_FULL: Rgba = [0x3d, 0xdc, 0x5a, 0xff];

fn canvas_colour(glyph: Glyph) -> Rgba {
    match glyph {
        Glyph::Stopped => [0xa0, 0xa0, 0xa0, 0xff],
        Glyph::Idle => [0xf4, 0xf1, 0xe8, 0xff],
        Glyph::Loading => [0xf2, 0xb1, 0x34, 0xff],
        Glyph::Generating => [0x4a, 0x90, 0xe2, 0xff],
        Glyph::Error => [0xe0, 0x3c, 0x31, 0xff],
    }
}

/// An RGBA image, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixmap {
    pub size: u32,
    pub rgba: Vec<u8>,
}

impl Pixmap {
    fn new(size: u32) -> Self {
        Self {
            size,
            rgba: vec![0; (size * size * 4) as usize],
        }
    }

    /// The pixel at (x, y), RGBA.
    pub fn pixel(&self, x: u32, y: u32) -> Rgba {
        let i = ((y * self.size + x) * 4) as usize;
        [self.rgba[i], self.rgba[i + 1], self.rgba[i + 2], self.rgba[i + 3]]
    }

    fn put(&mut self, x: i64, y: i64, colour: Rgba) {
        if x < 0 || y < 0 || x >= self.size as i64 || y >= self.size as i64 {
            return;
        }
        let i = ((y as u32 * self.size + x as u32) * 4) as usize;
        self.rgba[i..i + 4].copy_from_slice(&colour);
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgba) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(x, y, colour);
            }
        }
    }

    /// A line `width` pixels wide from `from` to `to`, stamped as discs along its length.
    fn line(&mut self, from: (f64, f64), to: (f64, f64), width: f64, colour: Rgba) {
        let steps = ((to.0 - from.0).abs().max((to.1 - from.1).abs()) * 4.0).ceil() as i64;
        for i in 0..=steps {
            let t = i as f64 / steps.max(1) as f64;
            let cx = from.0 + (to.0 - from.0) * t;
            let cy = from.1 + (to.1 - from.1) * t;
            let r = width / 2.0;
            for y in (cy - r).floor() as i64..=(cy + r).ceil() as i64 {
                for x in (cx - r).floor() as i64..=(cx + r).ceil() as i64 {
                    let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                    if dx * dx + dy * dy <= r * r {
                        self.put(x, y, colour);
                    }
                }
            }
        }
    }

    /// The same pixels as ARGB32 in network byte order, what StatusNotifierItem wants.
    pub fn to_argb32(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rgba.len());
        for px in self.rgba.chunks_exact(4) {
            out.extend_from_slice(&[px[3], px[0], px[1], px[2]]);
        }
        out
    }
}

/// Where the canvas sits in an icon of `size` pixels: (x0, y0, x1, y1).
pub fn canvas_rect(size: u32) -> (u32, u32, u32, u32) {
    let s = size as f64;
    (
        (s * 0.14).round() as u32,
        (s * 0.06).round() as u32,
        (s * 0.86).round() as u32,
        (s * 0.62).round() as u32,
    )
}

/// Draws the icon for `choice` at `size` × `size` pixels.
pub fn draw(choice: IconChoice, size: u32) -> Pixmap {
    let mut pix = Pixmap::new(size);
    pix.rect(0, 0, size as i64, size as i64, TRANSPARENT);
    let s = size as f64;
    let leg = (s / 11.0).max(1.5);
    // Three legs: two splayed in front, one behind (drawn first, so the others cover it).
    pix.line((s * 0.5, s * 0.1), (s * 0.5, s * 0.97), leg, FRAME);
    pix.line((s * 0.42, s * 0.12), (s * 0.16, s * 0.97), leg, WOOD);
    pix.line((s * 0.58, s * 0.12), (s * 0.84, s * 0.97), leg, WOOD);

    let (x0, y0, x1, y1) = canvas_rect(size);
    let (x0, y0, x1, y1) = (x0 as i64, y0 as i64, x1 as i64, y1 as i64);
    pix.rect(x0, y0, x1, y1, FRAME);
    pix.rect(x0 + 1, y0 + 1, x1 - 1, y1 - 1, canvas_colour(choice.glyph));
    // The ledge the canvas stands on.
    pix.rect(x0 - 1, y1, x1 + 1, y1 + (size as i64 / 16).max(1) + 1, WOOD);

    if let Some(tenths) = choice.progress_tenths {
        // The bar runs across the canvas's lower part, filled tenth by tenth.
        let bar_h = ((y1 - y0) / 3).max(2);
        let (bx0, bx1) = (x0 + 2, x1 - 2);
        let (by0, by1) = (y1 - 2 - bar_h, y1 - 2);
        pix.rect(bx0, by0, bx1, by1, BAR_EMPTY);
        let filled = (bx1 - bx0) * tenths.min(10) as i64 / 10;
        pix.rect(bx0, by0, bx0 + filled, by1, BAR_FULL);
    }
    pix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(glyph: Glyph, progress_tenths: Option<u8>) -> IconChoice {
        IconChoice { glyph, progress_tenths }
    }

    fn count(pix: &Pixmap, colour: Rgba) -> usize {
        pix.rgba.chunks_exact(4).filter(|p| *p == colour).count()
    }

    #[test]
    fn every_size_has_the_right_byte_count_and_transparent_corners() {
        for size in SIZES {
            let pix = draw(choice(Glyph::Idle, None), size);
            assert_eq!(pix.rgba.len(), (size * size * 4) as usize);
            assert_eq!(pix.to_argb32().len(), pix.rgba.len());
            assert_eq!(pix.pixel(0, size - 1)[3], 0, "bottom-left corner");
            assert_eq!(pix.pixel(size - 1, 0)[3], 0, "top-right corner");
        }
    }

    #[test]
    fn the_canvas_colour_tells_the_state() {
        let glyphs = [
            Glyph::Stopped,
            Glyph::Idle,
            Glyph::Loading,
            Glyph::Generating,
            Glyph::Error,
        ];
        let (x0, y0, _, _) = canvas_rect(32);
        let centres: Vec<Rgba> = glyphs
            .iter()
            .map(|g| draw(choice(*g, None), 32).pixel(x0 + 3, y0 + 3))
            .collect();
        for (g, c) in glyphs.iter().zip(&centres) {
            assert_eq!(*c, canvas_colour(*g), "{g:?}");
        }
        for i in 0..centres.len() {
            for j in i + 1..centres.len() {
                assert_ne!(centres[i], centres[j]);
            }
        }
    }

    #[test]
    fn the_progress_bar_fills_by_tenths() {
        let empty = count(&draw(choice(Glyph::Generating, Some(0)), 32), BAR_FULL);
        assert_eq!(empty, 0);
        let filled: Vec<usize> = (0..=10)
            .map(|t| count(&draw(choice(Glyph::Generating, Some(t)), 32), BAR_FULL))
            .collect();
        assert!(filled.windows(2).all(|w| w[0] < w[1]), "{filled:?}");
        let full = filled[10];
        assert_eq!(count(&draw(choice(Glyph::Generating, Some(10)), 32), BAR_EMPTY), 0);
        assert!((filled[5] as f64 / full as f64 - 0.5).abs() < 0.1, "{filled:?}");
        assert_eq!(count(&draw(choice(Glyph::Idle, None), 32), BAR_EMPTY), 0);
    }

    #[test]
    fn argb_moves_alpha_first() {
        let pix = Pixmap {
            size: 1,
            rgba: vec![1, 2, 3, 4],
        };
        assert_eq!(pix.to_argb32(), [4, 1, 2, 3]);
    }
}
