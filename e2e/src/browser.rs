//! Real headless Chromium for the dashboard tests (Debian's `chromium`, which `.ci/run`
//! and `scripts/test.sh` install), and a PNG decoder small enough to tell a rendered
//! page from a blank one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser executable, or a message saying how to install it.
pub fn chromium() -> Result<PathBuf, String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh").args(["-c", &format!("command -v {name}")]).output()
            && out.status.success()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !p.is_empty() {
                return Ok(PathBuf::from(p));
            }
        }
    }
    Err(
        "headless Chromium is missing: apt-get install -y --no-install-recommends chromium \
         (scripts/test.sh does this)"
            .into(),
    )
}

/// Run Chromium headless with `args` and `url`, in a fresh profile, killed after
/// `limit`; returns its stdout.
pub fn run(args: &[&str], url: &str, limit: Duration) -> Result<String, String> {
    let bin = chromium()?;
    let profile = std::env::temp_dir().join(format!("berth-chromium-{}-{}", std::process::id(), fastrand::u32(..)));
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start chromium: {e}"))?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = std::io::Read::read_to_string(out, &mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&profile);
    match status {
        Some(st) if st.success() => Ok(out),
        Some(st) => Err(format!("chromium exited with {st}")),
        None => Err(format!("chromium did not finish within {limit:?}")),
    }
}

/// The DOM after the page's scripts ran (`--dump-dom`).
pub fn dump_dom(url: &str) -> Result<String, String> {
    run(
        &["--virtual-time-budget=3000", "--dump-dom"],
        url,
        Duration::from_secs(90),
    )
}

/// A PNG screenshot of `url` at `width`x`height`, written to `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) -> Result<(), String> {
    run(
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
            "--virtual-time-budget=3000",
        ],
        url,
        Duration::from_secs(90),
    )?;
    if path.exists() {
        Ok(())
    } else {
        Err(format!("chromium wrote no screenshot to {}", path.display()))
    }
}

/// A decoded 8-bit RGB or RGBA image.
#[derive(Debug)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Bytes per pixel (3 or 4).
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// The RGB of pixel `i`.
    pub fn rgb(&self, i: usize) -> [u8; 3] {
        let p = &self.pixels[i * self.channels..i * self.channels + 3];
        [p[0], p[1], p[2]]
    }

    /// How many distinct colours, and the share of pixels that differ from the most
    /// common one (the background).
    pub fn variety(&self) -> (usize, f64) {
        let mut counts = std::collections::HashMap::new();
        let n = self.width * self.height;
        for i in 0..n {
            *counts.entry(self.rgb(i)).or_insert(0usize) += 1;
        }
        let background = counts.values().copied().max().unwrap_or(0);
        (counts.len(), 1.0 - background as f64 / n.max(1) as f64)
    }
}

/// Decode a non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes).
pub fn decode_png(bytes: &[u8]) -> Result<Image, String> {
    if bytes.len() < 8 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" {
        return Err("not a PNG".into());
    }
    let (mut pos, mut header, mut data) = (8, None, Vec::new());
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let body = bytes.get(pos + 8..pos + 8 + len).ok_or("truncated chunk")?;
        match kind {
            b"IHDR" => header = Some(body.to_vec()),
            b"IDAT" => data.extend_from_slice(body),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let h = header.ok_or("no IHDR")?;
    let width = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let height = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let (depth, color, interlace) = (h[8], h[9], h[12]);
    let channels = match (depth, color, interlace) {
        (8, 2, 0) => 3,
        (8, 6, 0) => 4,
        _ => {
            return Err(format!(
                "unsupported PNG: depth {depth}, colour type {color}, interlace {interlace}"
            ));
        }
    };
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&data[..]), &mut raw)
        .map_err(|e| format!("bad image data: {e}"))?;
    let stride = width * channels;
    if raw.len() < height * (stride + 1) {
        return Err("short image data".into());
    }
    let mut pixels = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                pixels[y * stride + x - channels]
            } else {
                0
            };
            let b = if y > 0 { pixels[(y - 1) * stride + x] } else { 0 };
            let c = if x >= channels && y > 0 {
                pixels[(y - 1) * stride + x - channels]
            } else {
                0
            };
            let v = line[x];
            pixels[y * stride + x] = match filter {
                0 => v,
                1 => v.wrapping_add(a),
                2 => v.wrapping_add(b),
                3 => v.wrapping_add(((u16::from(a) + u16::from(b)) / 2) as u8),
                4 => v.wrapping_add(paeth(a, b, c)),
                f => return Err(format!("bad filter {f}")),
            };
        }
    }
    Ok(Image {
        width,
        height,
        channels,
        pixels,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}
