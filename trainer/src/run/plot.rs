//! Training curves as a PNG: train and eval loss (left) and perplexity on a log scale (right)
//! against the step, drawn from `metrics.jsonl`. Written next to the metrics at every evaluation
//! and by `flightlm-trainer plot DIR`.
//!
//! The picture is rasterized and encoded here (lines, points, a 3×5 pixel font for the axis
//! numbers and titles, a minimal PNG writer over zlib) so that plotting needs no font files, no
//! plotting library and no image crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;
use flate2::Compression;

use crate::error::TrainError;

pub const PLOT_FILE: &str = "curves.png";

const WIDTH: usize = 960;
const HEIGHT: usize = 420;
const MARGIN_LEFT: usize = 60;
const MARGIN_RIGHT: usize = 20;
const MARGIN_TOP: usize = 36;
const MARGIN_BOTTOM: usize = 40;
const SCALE: usize = 2; // font pixels per glyph pixel

const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [225, 225, 225];
const INK: [u8; 3] = [40, 40, 40];
const TRAIN: [u8; 3] = [31, 119, 180];
const EVAL: [u8; 3] = [214, 39, 40];

/// The curves read back from a metrics file.
#[derive(Debug, Default, PartialEq)]
pub struct Curves {
    /// (step, loss) of train lines.
    pub train: Vec<(f64, f64)>,
    /// (step, eval loss) of eval lines.
    pub eval: Vec<(f64, f64)>,
}

/// Reads the train and eval losses of `metrics.jsonl`; lines of other kinds are ignored.
pub fn read_curves(metrics: &Path) -> Result<Curves, TrainError> {
    let text =
        std::fs::read_to_string(metrics).map_err(|source| TrainError::io(metrics, source))?;
    let mut curves = Curves::default();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = value["step"].as_f64();
        match (value["kind"].as_str(), step) {
            (Some("train"), Some(step)) => {
                if let Some(loss) = value["loss"].as_f64() {
                    curves.train.push((step, loss));
                }
            }
            (Some("eval"), Some(step)) => {
                if let Some(loss) = value["eval_loss"].as_f64() {
                    curves.eval.push((step, loss));
                }
            }
            _ => {}
        }
    }
    Ok(curves)
}

/// Draws `DIR/metrics.jsonl` into `DIR/curves.png` and returns the PNG's path.
pub fn plot_run(dir: &Path) -> Result<PathBuf, TrainError> {
    let curves = read_curves(&dir.join("metrics.jsonl"))?;
    let path = dir.join(PLOT_FILE);
    write_png(&render(&curves), &path)?;
    Ok(path)
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            pixels: WHITE.repeat(WIDTH * HEIGHT),
        }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            let at = (y as usize * WIDTH + x as usize) * 3;
            self.pixels[at..at + 3].copy_from_slice(&color);
        }
    }

    fn line(&mut self, from: (f64, f64), to: (f64, f64), color: [u8; 3]) {
        let steps = (to.0 - from.0)
            .abs()
            .max((to.1 - from.1).abs())
            .ceil()
            .max(1.0) as usize;
        for index in 0..=steps {
            let t = index as f64 / steps as f64;
            let x = from.0 + (to.0 - from.0) * t;
            let y = from.1 + (to.1 - from.1) * t;
            self.set(x.round() as i64, y.round() as i64, color);
        }
    }

    fn dot(&mut self, center: (f64, f64), color: [u8; 3]) {
        for dy in -2..=2i64 {
            for dx in -2..=2i64 {
                if dx * dx + dy * dy <= 5 {
                    self.set(
                        center.0.round() as i64 + dx,
                        center.1.round() as i64 + dy,
                        color,
                    );
                }
            }
        }
    }

    /// Writes `text` with its top-left corner at (x, y).
    fn text(&mut self, x: usize, y: usize, text: &str, color: [u8; 3]) {
        for (index, character) in text.chars().enumerate() {
            let rows = glyph(character);
            let left = x + index * 4 * SCALE;
            for (row, bits) in rows.iter().enumerate() {
                for column in 0..3 {
                    if bits & (0b100 >> column) != 0 {
                        for sy in 0..SCALE {
                            for sx in 0..SCALE {
                                let px = left + column * SCALE + sx;
                                let py = y + row * SCALE + sy;
                                self.set(px as i64, py as i64, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 glyphs, one row of three bits per line; unknown characters are blank.
fn glyph(character: char) -> [u8; 5] {
    match character.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'a' => [2, 5, 7, 5, 5],
        'e' => [7, 4, 6, 4, 7],
        'g' => [7, 4, 5, 5, 7],
        'i' => [7, 2, 2, 2, 7],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'n' => [6, 5, 5, 5, 5],
        'o' => [7, 5, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'r' => [6, 5, 6, 5, 5],
        's' => [7, 4, 7, 1, 7],
        't' => [7, 2, 2, 2, 2],
        'v' => [5, 5, 5, 5, 2],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        _ => [0; 5],
    }
}

/// A number short enough for an axis label.
fn label(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// One panel: `series` mapped into `[left, right) x [top, bottom)`, with a log-10 y axis when
/// `log` (values are then drawn as exp(loss) = perplexity).
fn panel(canvas: &mut Canvas, area: (usize, usize, usize, usize), curves: &Curves, log: bool) {
    let (left, right, top, bottom) = area;
    let value = |loss: f64| {
        if log {
            loss / std::f64::consts::LN_10
        } else {
            loss
        }
    };
    let points = curves.train.iter().chain(&curves.eval);
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(step, loss) in points {
        x_max = x_max.max(step);
        y_min = y_min.min(value(loss));
        y_max = y_max.max(value(loss));
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    if y_max - y_min < 1e-9 {
        y_max = y_min + 1.0;
    }
    let to_x = |step: f64| left as f64 + step / x_max * (right - left) as f64;
    let to_y = |v: f64| bottom as f64 - (v - y_min) / (y_max - y_min) * (bottom - top) as f64;
    for tick in 0..=4 {
        let fraction = tick as f64 / 4.0;
        let y = bottom as f64 - fraction * (bottom - top) as f64;
        canvas.line((left as f64, y), (right as f64, y), GRID);
        let shown = y_min + fraction * (y_max - y_min);
        let shown = if log { 10f64.powf(shown) } else { shown };
        canvas.text(left.saturating_sub(52), y as usize - 5, &label(shown), INK);
        let x = left as f64 + fraction * (right - left) as f64;
        canvas.text(x as usize - 8, bottom + 8, &label(fraction * x_max), INK);
    }
    canvas.line((left as f64, top as f64), (left as f64, bottom as f64), INK);
    canvas.line(
        (left as f64, bottom as f64),
        (right as f64, bottom as f64),
        INK,
    );
    for pair in curves.train.windows(2) {
        let from = (to_x(pair[0].0), to_y(value(pair[0].1)));
        let to = (to_x(pair[1].0), to_y(value(pair[1].1)));
        canvas.line(from, to, TRAIN);
    }
    for &(step, loss) in &curves.eval {
        canvas.dot((to_x(step), to_y(value(loss))), EVAL);
    }
}

/// The RGB pixels of the two panels.
fn render(curves: &Curves) -> Vec<u8> {
    let mut canvas = Canvas::new();
    let half = WIDTH / 2;
    let bottom = HEIGHT - MARGIN_BOTTOM;
    panel(
        &mut canvas,
        (MARGIN_LEFT, half - MARGIN_RIGHT, MARGIN_TOP, bottom),
        curves,
        false,
    );
    panel(
        &mut canvas,
        (half + MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, bottom),
        curves,
        true,
    );
    canvas.text(MARGIN_LEFT, 8, "loss", INK);
    canvas.text(MARGIN_LEFT + 48, 8, "train", TRAIN);
    canvas.text(MARGIN_LEFT + 100, 8, "eval", EVAL);
    canvas.text(half + MARGIN_LEFT, 8, "perplexity (log)", INK);
    canvas.text(WIDTH / 2 - 20, HEIGHT - 14, "step", INK);
    canvas.pixels
}

/// Writes 8-bit RGB `pixels` as a PNG: signature, IHDR, one zlib-compressed IDAT, IEND.
fn write_png(pixels: &[u8], path: &Path) -> Result<(), TrainError> {
    let io_error = |source| TrainError::io(path, source);
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&(WIDTH as u32).to_be_bytes());
    header.extend_from_slice(&(HEIGHT as u32).to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
    let mut raw = Vec::with_capacity(HEIGHT * (WIDTH * 3 + 1));
    for row in pixels.chunks(WIDTH * 3) {
        raw.push(0); // filter type: none
        raw.extend_from_slice(row);
    }
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&raw).map_err(io_error)?;
    let compressed = encoder.finish().map_err(io_error)?;
    let mut file = BufWriter::new(File::create(path).map_err(io_error)?);
    file.write_all(b"\x89PNG\r\n\x1a\n").map_err(io_error)?;
    for (kind, data) in [
        (b"IHDR", &header[..]),
        (b"IDAT", &compressed[..]),
        (b"IEND", &[][..]),
    ] {
        file.write_all(&(data.len() as u32).to_be_bytes())
            .map_err(io_error)?;
        file.write_all(kind).map_err(io_error)?;
        file.write_all(data).map_err(io_error)?;
        let crc = crc32(kind.iter().chain(data));
        file.write_all(&crc.to_be_bytes()).map_err(io_error)?;
    }
    file.flush().map_err(io_error)
}

/// The CRC-32 (IEEE) that PNG chunks end with.
fn crc32<'a>(bytes: impl Iterator<Item = &'a u8>) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_come_from_train_and_eval_lines_and_render_to_a_png() {
        let dir = std::env::temp_dir().join(format!("flightlm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = [
            r#"{"kind":"start","step":0}"#,
            r#"{"kind":"eval","step":0,"eval_loss":9.0,"eval_perplexity":8103.0}"#,
            r#"{"kind":"train","step":10,"loss":7.5}"#,
            r#"{"kind":"train","step":20,"loss":6.0}"#,
            r#"{"kind":"eval","step":20,"eval_loss":6.2,"eval_perplexity":492.7}"#,
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
        let curves = read_curves(&dir.join("metrics.jsonl")).unwrap();
        assert_eq!(curves.train, vec![(10.0, 7.5), (20.0, 6.0)]);
        assert_eq!(curves.eval, vec![(0.0, 9.0), (20.0, 6.2)]);
        let path = plot_run(&dir).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Walk the chunks, checking each CRC, and inflate the image data.
        let mut at = 8;
        let mut compressed = Vec::new();
        while at < bytes.len() {
            let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = &bytes[at + 4..at + 8];
            let data = &bytes[at + 8..at + 8 + length];
            let crc =
                u32::from_be_bytes(bytes[at + 8 + length..at + 12 + length].try_into().unwrap());
            assert_eq!(crc, crc32(kind.iter().chain(data)));
            if kind == b"IDAT" {
                compressed.extend_from_slice(data);
            }
            at += 12 + length;
        }
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&compressed[..]),
            &mut raw,
        )
        .unwrap();
        assert_eq!(raw.len(), HEIGHT * (WIDTH * 3 + 1));
        let pixels: Vec<u8> = raw
            .chunks(WIDTH * 3 + 1)
            .flat_map(|row| row[1..].to_vec())
            .collect();
        let count = |color: [u8; 3]| pixels.chunks(3).filter(|pixel| *pixel == color).count();
        assert!(count(TRAIN) > 100, "the train curve is drawn");
        assert!(count(EVAL) > 20, "the eval points are drawn");
        // The standard check value of CRC-32.
        assert_eq!(crc32(b"123456789".iter()), 0xcbf4_3926);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
