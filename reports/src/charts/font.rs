//! Finding a TrueType font for PNG charts.
//!
//! plotters draws PNG text with `ab_glyph`, which needs font bytes registered
//! at runtime; we read a system font rather than ship one. SVG charts need no
//! font (the viewer draws their text), so a missing font only costs the PNGs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::style::{register_font, FontStyle};

/// Environment variable naming the font file to use instead of searching.
pub const FONT_ENV: &str = "PCHAT_REPORT_FONT";

/// Where system fonts live on Linux distributions.
const FONT_DIR: &str = "/usr/share/fonts";

/// The font tried first: what Debian's `fonts-dejavu-core` installs.
const PREFERRED: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The family name plotters looks up for its default label font, so axis
/// labels and our own text both find the registered font.
pub(crate) const FAMILY: &str = "sans-serif";

/// Whether PNG charts can be drawn in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FontStatus {
    /// This font file is registered with plotters.
    Registered(PathBuf),
    /// No usable font: PNG charts are skipped, and this says why and what to
    /// install.
    Missing(String),
}

/// Registers a font with plotters on first use and reports the outcome.
///
/// The search runs once per process: plotters' font table is global, and
/// the font bytes must live for the rest of the process anyway. So
/// [`FONT_ENV`] is read the first time a report is written.
///
/// Order: the file named by [`FONT_ENV`] if set (and only that, so a
/// mistyped path is reported rather than silently replaced); otherwise
/// DejaVu Sans, then any other `.ttf` under `/usr/share/fonts`, regular
/// faces before bold, italic or monospace ones.
pub fn font_status() -> &'static FontStatus {
    static STATUS: OnceLock<FontStatus> = OnceLock::new();
    STATUS.get_or_init(find_and_register)
}

fn find_and_register() -> FontStatus {
    if let Some(path) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match register(&path) {
            Ok(()) => FontStatus::Registered(path),
            Err(why) => FontStatus::Missing(format!(
                "{FONT_ENV} names {}, which {why}; PNG charts were skipped (the SVG charts are \
                 complete). Point {FONT_ENV} at a TrueType font file, or unset it to use a \
                 system font (Debian: apt-get install fonts-dejavu-core)",
                path.display()
            )),
        };
    }
    let mut candidates = vec![PathBuf::from(PREFERRED)];
    let mut found = Vec::new();
    collect_ttf(Path::new(FONT_DIR), 0, &mut found);
    // Regular faces first: a bold or monospace face as the only font makes
    // charts harder to read. Then by path, so the choice is stable.
    found.sort_by_key(|p| (!is_regular(p), p.clone()));
    candidates.extend(found);
    for path in candidates {
        if register(&path).is_ok() {
            return FontStatus::Registered(path);
        }
    }
    FontStatus::Missing(format!(
        "no usable TrueType font was found under {FONT_DIR}, so the PNG charts were skipped (the \
         SVG charts are complete). Install one (Debian: apt-get install fonts-dejavu-core) or set \
         {FONT_ENV} to a .ttf file"
    ))
}

/// Reads and registers one font file; the error says what went wrong.
fn register(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    // plotters keeps a `&'static` reference to the font. This runs at most a
    // few times per process (once on success), so the leak is bounded.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| "is not a TrueType or OpenType font".to_string())
}

/// Collects `.ttf` files below `dir`. Depth and count are bounded because
/// this walks a system directory we do not control.
fn collect_ttf(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    const MAX_DEPTH: usize = 6;
    const MAX_FILES: usize = 5000;
    if depth > MAX_DEPTH || out.len() >= MAX_FILES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_ttf(&path, depth + 1, out),
            Ok(_) if has_ttf_extension(&path) => out.push(path),
            _ => {}
        }
        if out.len() >= MAX_FILES {
            return;
        }
    }
}

fn has_ttf_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
}

fn is_regular(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [
        "bold",
        "italic",
        "oblique",
        "mono",
        "math",
        "light",
        "condensed",
    ]
    .iter()
    .all(|w| !name.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_faces_are_preferred() {
        assert!(is_regular(Path::new("/x/DejaVuSans.ttf")));
        assert!(is_regular(Path::new("/x/LiberationSans-Regular.ttf")));
        assert!(!is_regular(Path::new("/x/DejaVuSans-Bold.ttf")));
        assert!(!is_regular(Path::new("/x/DejaVuSansMono.ttf")));
    }
}
