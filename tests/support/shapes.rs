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

/// Judges an RGB picture (3 bytes a pixel, row-major).
pub fn judge(width: usize, height: usize, pixels: &[u8]) -> Judgement {
    let at = |x: usize, y: usize| -> [f32; 3] {
        let i = (y * width + x) * 3;
        [f32::from(pixels[i]), f32::from(pixels[i + 1]), f32::from(pixels[i + 2])]
    };
    let border = 3;
    let mut channels: [Vec<f32>; 3] = Default::default();
    for y in 0..height {
        for x in 0..width {
            if x < border || y < border || x >= width - border || y >= height - border {
                let p = at(x, y);
                for c in 0..3 {
                    channels[c].push(p[c]);
                }
            }
        }
    }
    let background_rgb = [
        median(&mut channels[0]),
        median(&mut channels[1]),
        median(&mut channels[2]),
    ];
    let background = nearest(background_rgb);

    // The shape: the largest connected region clearly away from the background colour.
    let away: Vec<bool> = (0..width * height)
        .map(|i| distance(at(i % width, i / width), background_rgb.map(|v| v as u8)) > 60.0)
        .collect();
    let region = largest_component(width, height, &away);
    if region.iter().filter(|&&m| m).count() < 16 {
        return Judgement {
            background,
            colour: "none",
            shape: "none",
        };
    }
    // Its colour from the inside (away from the edge the VAE blends with the background).
    let inner = |x: usize, y: usize| {
        x >= 2
            && y >= 2
            && x + 2 < width
            && y + 2 < height
            && (0..5).all(|dy| (0..5).all(|dx| region[(y + dy - 2) * width + x + dx - 2]))
    };
    let mut colour_channels: [Vec<f32>; 3] = Default::default();
    for pass in 0..2 {
        for y in 0..height {
            for x in 0..width {
                if region[y * width + x] && (pass == 1 || inner(x, y)) {
                    let p = at(x, y);
                    for c in 0..3 {
                        colour_channels[c].push(p[c]);
                    }
                }
            }
        }
        if !colour_channels[0].is_empty() {
            break;
        }
    }
    let shape_rgb = [
        median(&mut colour_channels[0]),
        median(&mut colour_channels[1]),
        median(&mut colour_channels[2]),
    ];
    let colour = nearest(shape_rgb);
    // The outline: pixels nearer the shape's colour than the background's, largest region.
    let nearer: Vec<bool> = (0..width * height)
        .map(|i| {
            let p = at(i % width, i / width);
            distance(p, shape_rgb.map(|v| v as u8)) < distance(p, background_rgb.map(|v| v as u8))
        })
        .collect();
    let mask = largest_component(width, height, &nearer);

    // Bounding box from rows and columns with a few foreground pixels (ignores stray specks).
    let rows: Vec<usize> = (0..height)
        .filter(|&y| (0..width).filter(|&x| mask[y * width + x]).count() >= 2)
        .collect();
    let cols: Vec<usize> = (0..width)
        .filter(|&x| (0..height).filter(|&y| mask[y * width + x]).count() >= 2)
        .collect();
    let (Some(&top), Some(&bottom), Some(&left), Some(&right)) = (rows.first(), rows.last(), cols.first(), cols.last())
    else {
        return Judgement {
            background,
            colour,
            shape: "none",
        };
    };
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
    let shape = SHAPES
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
        .expect("shapes");
    Judgement {
        background,
        colour,
        shape,
    }
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
