//! Without a usable font, the report still has every file but the PNGs, and
//! says why. Its own test binary (one process per file) because the font is
//! registered once per process.

mod common;

use reports::charts::{font_status, FontStatus, FONT_ENV};

#[test]
fn svg_charts_need_no_font() {
    // Only test in this process, so setting the variable races nothing.
    std::env::set_var(FONT_ENV, "/nonexistent/no-such-font.ttf");
    assert!(matches!(font_status(), FontStatus::Missing(_)));

    let dir = tempfile::tempdir().expect("create a temporary directory");
    let files = reports::write_report(&common::synthetic_input(), dir.path()).expect("write");

    assert!(files.png_charts.is_empty());
    assert!(!dir.path().join("charts/latency-over-time.png").exists());
    assert_eq!(files.svg_charts.len(), 6);
    for svg in &files.svg_charts {
        let text = std::fs::read_to_string(svg).expect("read the SVG");
        assert!(text.starts_with("<svg"), "{}", svg.display());
        // Text is still there: the SVG viewer draws it.
        assert!(text.contains("<text"), "{} has no text", svg.display());
    }

    let why = files
        .png_skipped
        .expect("the report says PNGs were skipped");
    assert!(
        why.contains("fonts-dejavu-core") && why.contains(FONT_ENV),
        "{why}"
    );
    let md = std::fs::read_to_string(&files.markdown).expect("read summary.md");
    assert!(md.contains("fonts-dejavu-core"), "{md}");
    assert!(
        md.contains("(charts/latency-over-time.svg)"),
        "links fall back to the SVGs"
    );
    let html = std::fs::read_to_string(&files.html).expect("read report.html");
    assert!(html.contains("PNG charts skipped"));
}
