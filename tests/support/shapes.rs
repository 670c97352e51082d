//! A simple judge of tiny-shapes pictures: background colour from the border, shape colour
//! from the rest, shape class from how the shape fills its bounding box (compared with an
//! ideal circle, square and apex-up triangle in that box). Colours are the training palette
//! (`tools/tiny_shapes/data.py`); each measured colour is named by its nearest palette entry.

/// The colours the model knows, with the RGB values it was trained on.
pub const PALETTE: [(&str, [u8; 3]); 8] = [
    ("red", [230, 30, 30]),
    ("green", [30, 190, 40]),
    ("blue", [30, 60, 230]),
    ("yellow", [240, 220, 30]),
    ("orange", [245, 140, 20]),
    ("purple", [150, 40, 200]),
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
];

pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub background: &'static str,
    pub colour: &'static str,
    pub shape: &'static str,
}

fn nearest(rgb: [f32; 3]) -> &'static str {
    PALETTE
        .iter()
        .min_by(|a, b| distance(rgb, a.1).total_cmp(&distance(rgb, b.1)))
        .map(|(name, _)| *name)
        .expect("a palette")
}

fn distance(a: [f32; 3], b: [u8; 3]) -> f32 {
    (0..3).map(|i| (a[i] - f32::from(b[i])).powi(2)).sum::<f32>().sqrt()
}

fn median(values: &mut [f32]) -> f32 {
    values.sort_by(f32::total_cmp);
    values[values.len() / 2]
}

/// An RGB picture, 3 bytes a pixel, row-major.
struct Picture<'a> {
    width: usize,
    height: usize,
    pixels: &'a [u8],
}

impl Picture<'_> {
    fn at(&self, x: usize, y: usize) -> [f32; 3] {
        let i = (y * self.width + x) * 3;
        [
            f32::from(self.pixels[i]),
            f32::from(self.pixels[i + 1]),
            f32::from(self.pixels[i + 2]),
        ]
    }

    /// The per-channel median of the pixels `keep` accepts; `None` when it accepts none.
    fn median_colour(&self, keep: impl Fn(usize, usize) -> bool) -> Option<[f32; 3]> {
        let mut channels: [Vec<f32>; 3] = Default::default();
        for y in 0..self.height {
            for x in (0..self.width).filter(|&x| keep(x, y)) {
                let p = self.at(x, y);
                for c in 0..3 {
                    channels[c].push(p[c]);
                }
            }
        }
        if channels[0].is_empty() {
            return None;
        }
        Some(channels.map(|mut values| median(&mut values)))
    }

    /// The largest region of pixels `select` accepts (given the pixel's colour).
    fn largest_region(&self, select: impl Fn([f32; 3]) -> bool) -> Vec<bool> {
        let selected: Vec<bool> = (0..self.width * self.height)
            .map(|i| select(self.at(i % self.width, i / self.width)))
            .collect();
        largest_component(self.width, self.height, &selected)
    }
}

/// Judges an RGB picture (3 bytes a pixel, row-major).
pub fn judge(width: usize, height: usize, pixels: &[u8]) -> Judgement {
    let picture = Picture { width, height, pixels };
    let border = 3;
    let background_rgb = picture
        .median_colour(|x, y| x < border || y < border || x >= width - border || y >= height - border)
        .expect("a picture has a border");
    let background = nearest(background_rgb);

    // The shape: the largest connected region clearly away from the background colour.
    let region = picture.largest_region(|p| distance(p, background_rgb.map(|v| v as u8)) > 60.0);
    if region.iter().filter(|&&m| m).count() < 16 {
        return Judgement {
            background,
            colour: "none",
            shape: "none",
        };
    }
    let shape_rgb = region_colour(&picture, &region);
    let colour = nearest(shape_rgb);
    // The outline: pixels nearer the shape's colour than the background's, largest region.
    let mask = picture
        .largest_region(|p| distance(p, shape_rgb.map(|v| v as u8)) < distance(p, background_rgb.map(|v| v as u8)));
    Judgement {
        background,
        colour,
        shape: classify(width, height, &mask).unwrap_or("none"),
    }
}

/// A region's colour, from its inside where it has one (away from the edge the VAE blends
/// with the background), else from all of it.
fn region_colour(picture: &Picture<'_>, region: &[bool]) -> [f32; 3] {
    let (width, height) = (picture.width, picture.height);
    let inner = |x: usize, y: usize| {
        x >= 2
            && y >= 2
            && x + 2 < width
            && y + 2 < height
            && (0..5).all(|dy| (0..5).all(|dx| region[(y + dy - 2) * width + x + dx - 2]))
    };
    picture
        .median_colour(|x, y| region[y * width + x] && inner(x, y))
        .or_else(|| picture.median_colour(|x, y| region[y * width + x]))
        .expect("a region with pixels")
}

/// The shape whose ideal (in the mask's bounding box) overlaps the mask best, by intersection
/// over union; `None` when the mask has no bounding box.
fn classify(width: usize, height: usize, mask: &[bool]) -> Option<&'static str> {
    // Bounding box from rows and columns with a few foreground pixels (ignores stray specks).
    let rows: Vec<usize> = (0..height)
        .filter(|&y| (0..width).filter(|&x| mask[y * width + x]).count() >= 2)
        .collect();
    let cols: Vec<usize> = (0..width)
        .filter(|&x| (0..height).filter(|&y| mask[y * width + x]).count() >= 2)
        .collect();
    let (&top, &bottom, &left, &right) = (rows.first()?, rows.last()?, cols.first()?, cols.last()?);
    let (bw, bh) = ((right - left + 1) as f32, (bottom - top + 1) as f32);
    let ideal = |shape: &str, x: usize, y: usize| -> bool {
        let u = (x - left) as f32 + 0.5;
        let v = (y - top) as f32 + 0.5;
        match shape {
            "square" => true,
            "circle" => {
                let (dx, dy) = (u / bw - 0.5, v / bh - 0.5);
                dx * dx + dy * dy <= 0.25
            }
            // Apex at the top centre, base along the bottom.
            _ => (u / bw - 0.5).abs() <= 0.5 * (v / bh),
        }
    };
    SHAPES
        .iter()
        .map(|&shape| {
            let (mut both, mut either) = (0u32, 0u32);
            for y in top..=bottom {
                for x in left..=right {
                    let (m, i) = (mask[y * width + x], ideal(shape, x, y));
                    both += u32::from(m && i);
                    either += u32::from(m || i);
                }
            }
            (shape, both as f32 / either.max(1) as f32)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(shape, _)| shape)
}

/// The largest 4-connected region of `mask`.
fn largest_component(width: usize, height: usize, mask: &[bool]) -> Vec<bool> {
    let mut label = vec![0u32; mask.len()];
    let mut best = (0u32, 0usize);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % width, i / width);
            let mut visit = |j: usize| {
                if mask[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - width);
            }
            if y + 1 < height {
                visit(i + width);
            }
        }
        if size > best.1 {
            best = (next, size);
        }
    }
    label.iter().map(|&l| best.0 != 0 && l == best.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(shape: &str, colour: [u8; 3], background: [u8; 3]) -> Vec<u8> {
        let (w, h) = (128usize, 128usize);
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 - 30.0, y as f32 - 40.0);
                let inside = (0.0..60.0).contains(&u)
                    && (0.0..60.0).contains(&v)
                    && match shape {
                        "square" => true,
                        "circle" => (u - 30.0).powi(2) + (v - 30.0).powi(2) <= 900.0,
                        _ => (u - 30.0).abs() <= v / 2.0,
                    };
                pixels.extend(if inside { colour } else { background });
            }
        }
        pixels
    }

    #[test]
    fn judges_clean_drawings() {
        for shape in SHAPES {
            for (i, (name, rgb)) in PALETTE.iter().enumerate() {
                let (bg_name, bg) = PALETTE[(i + 3) % PALETTE.len()];
                let judged = judge(128, 128, &draw(shape, *rgb, bg));
                assert_eq!(
                    judged,
                    Judgement {
                        background: bg_name,
                        colour: name,
                        shape
                    },
                    "{shape} {name} on {bg_name}"
                );
            }
        }
    }
}
