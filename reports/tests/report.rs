//! Writes real reports from the synthetic run (test data, see
//! `common/mod.rs`) and checks the files: present, well-formed, self-contained,
//! and (when Chromium is installed) rendered by a real browser.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reports::charts::{font_status, plans, FontStatus, RenderedChart, RenderedCharts, CHART_SIZE};
use reports::{compare, write_report, ReportFiles, ReportInput};
use scenarios::results::{RunResult, Sample};

use common::{synthetic_input, synthetic_run};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn write(input: &ReportInput) -> (tempfile::TempDir, ReportFiles) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let files = write_report(input, dir.path()).expect("write the report");
    (dir, files)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Width and height from a PNG's IHDR chunk, after checking the signature
/// and that the chunk is where the format puts it.
#[track_caller]
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 33,
        "a PNG of {} bytes is truncated",
        bytes.len()
    );
    assert_eq!(bytes[..8], PNG_SIGNATURE, "not a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk of a PNG is IHDR");
    assert_eq!(
        &bytes[bytes.len() - 8..bytes.len() - 4],
        b"IEND",
        "a complete PNG ends with IEND"
    );
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// PNGs need a font. Outside CI a missing font is reported and the PNG
/// checks are skipped; in CI it is a failure, so CI proves the PNGs.
fn font_available() -> bool {
    match font_status() {
        FontStatus::Registered(_) => true,
        FontStatus::Missing(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "a TrueType font is required in CI (apt-get install fonts-dejavu-core): {why}"
            );
            eprintln!("skipping PNG checks: {why}");
            false
        }
    }
}

#[test]
fn report_writes_every_file() {
    let input = synthetic_input();
    let (dir, files) = write(&input);

    for path in [&files.html, &files.markdown, &files.results_json] {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is missing or empty", path.display());
    }
    assert_eq!(files.html, dir.path().join("report.html"));
    assert_eq!(files.markdown, dir.path().join("summary.md"));

    // results.json is the run itself, readable as the results format.
    let back: RunResult =
        serde_json::from_str(&read(&files.results_json)).expect("results.json parses");
    assert_eq!(back.timeline.len(), input.result.timeline.len());
    assert_eq!(back.steps.len(), 2);

    // Two steps make a knee run: all six charts.
    let ids = [
        "latency-over-time",
        "throughput",
        "users-endpoints",
        "resources-vs-users",
        "latency-distribution",
        "knee",
    ];
    let expected: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join("charts").join(format!("{id}.svg")))
        .collect();
    assert_eq!(files.svg_charts, expected);
    for svg in &files.svg_charts {
        let text = read(svg);
        assert!(
            text.starts_with("<svg"),
            "{} does not start with <svg",
            svg.display()
        );
        assert!(
            text.trim_end().ends_with("</svg>"),
            "{} is not closed",
            svg.display()
        );
        assert!(
            !text.contains("no data"),
            "{} has data but says no data",
            svg.display()
        );
    }

    if font_available() {
        assert!(files.png_skipped.is_none());
        assert_eq!(files.png_charts.len(), ids.len());
        for (png, id) in files.png_charts.iter().zip(ids) {
            assert_eq!(png, &dir.path().join("charts").join(format!("{id}.png")));
            let bytes = std::fs::read(png).expect("read the PNG");
            assert_eq!(png_size(&bytes), CHART_SIZE, "{}", png.display());
            // A chart with text and lines compresses to well over a few
            // kilobytes; a blank one does not.
            assert!(
                bytes.len() > 10_000,
                "{} looks blank ({} bytes)",
                png.display(),
                bytes.len()
            );
        }
        let md = read(&files.markdown);
        assert!(md.contains("(charts/latency-over-time.png)"), "{md}");
    }
}

#[test]
fn html_is_self_contained_and_shows_the_verdicts() {
    let input = synthetic_input();
    let (_dir, files) = write(&input);
    let html = read(&files.html);

    assert!(html.starts_with("<!DOCTYPE html>"));
    for v in &input.verdicts {
        assert!(
            html.contains(&reports::html::escape(&v.claim)),
            "missing verdict {}",
            v.claim
        );
    }
    assert!(html.contains("<table class=\"verdicts\">"));
    assert!(html.contains("<tr class=\"fails\"><td>delivery correctness at 20,000 users</td>"));
    assert!(html.contains("✘ does not hold"));
    assert!(html.contains("✔ holds"));
    assert!(html.contains("<tr class=\"inconclusive\">") && html.contains("? inconclusive"));
    // Caller text is escaped, never interpreted.
    assert!(html.contains("p99 &lt;= 250 ms &amp; no gap"));
    assert!(!html.contains("p99 <= 250 ms & no gap"));

    // Self-contained: no scripts, no external references of any kind.
    let lower = html.to_lowercase();
    assert!(
        !lower.contains("<script"),
        "the report must not need JavaScript"
    );
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "external reference"
    );
    assert!(
        !lower.contains("<link") && !lower.contains("<img"),
        "external resource"
    );
    assert_eq!(html.matches("<svg").count(), 6, "every chart is inlined");

    for text in [
        "knee-test",
        "embedded reference server",
        "test-host",
        "loadgen run --scenario knee-test --seed 42 | tee log",
        "2026-12-01T10:00:00Z",
        "400 s (6 min 40 s)",
        "completed",
        "Knee:",
        "p99 delivery</th><td class=\"num\">≤ 250 ms",
        "http:503",
        "room 17: endpoint 4411 received seq 9002 before seq 9001",
        "largest schedule lag",
        "Synthetic test data, not a measurement.",
        "<h3>Events received</h3>",
    ] {
        assert!(html.contains(text), "report.html lacks {text:?}");
    }
    assert!(
        !html.contains("class=\"banner"),
        "a healthy run has no warning banner"
    );
}

/// The summary of the synthetic run, with the chart list fixed so the
/// snapshot does not depend on whether this machine has a font.
#[test]
fn summary_markdown() {
    let input = synthetic_input();
    let charts = RenderedCharts {
        charts: plans(&input)
            .into_iter()
            .map(|p| RenderedChart {
                id: p.id,
                svg_file: format!("charts/{}.svg", p.id),
                png_file: Some(format!("charts/{}.png", p.id)),
                title: p.title,
                caption: p.caption,
                svg: String::new(),
            })
            .collect(),
        png_skipped: None,
    };
    insta::assert_snapshot!(reports::markdown::render(&input, &charts));
}

#[test]
fn baseline_changes_are_listed() {
    let mut input = synthetic_input();
    let mut baseline = synthetic_run();
    baseline.started_at = "2026-11-01T10:00:00Z".to_string();
    // The earlier run was faster at 20,000 users and had a step at 30,000.
    let earlier = baseline.steps[1]
        .latencies
        .get_mut("delivery")
        .expect("delivery");
    earlier.p99_ms /= 2.0;
    let mut extra = baseline.steps[1].clone();
    extra.users = 30_000;
    baseline.steps.push(extra);
    input.baseline = Some(baseline.clone());

    let lines = compare(&baseline, &input.result);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("delivery p99 at 20,000 users:")
                && l.ends_with("(+100.0 %, slower)")),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("post_ack p99 at 10,000 users:") && l.ends_with("(unchanged)")));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("30,000 users: a step of the baseline, not in this run")
    );

    let (_dir, files) = write(&input);
    let md = read(&files.markdown);
    assert!(md.contains("## Compared with the baseline"));
    assert!(md.contains("(+100.0 %, slower)"));
    assert!(read(&files.html).contains("Compared with the baseline"));
}

/// Every way a run can lack data still gives a full report whose charts
/// say "no data" instead of panicking or drawing nonsense.
#[test]
fn missing_data_renders_no_data_charts() {
    let empty = |run: &mut RunResult| {
        run.timeline.clear();
        run.steps.clear();
    };
    let one_sample = |run: &mut RunResult| {
        run.timeline.truncate(1);
        run.timeline[0].users = 5;
        run.timeline[0].delivery_p99_ms = 12.0;
        run.steps.truncate(1);
    };
    let all_zero = |run: &mut RunResult| {
        for s in &mut run.timeline {
            *s = Sample {
                t_s: s.t_s,
                phase: s.phase.clone(),
                ..Default::default()
            };
        }
        for step in &mut run.steps {
            for l in step.latencies.values_mut() {
                *l = Default::default();
            }
        }
    };
    // (case, how it spoils the run, charts expected)
    type Case<'a> = (&'a str, &'a dyn Fn(&mut RunResult), usize);
    let cases: [Case; 3] = [
        ("empty", &empty, 5),
        ("one sample", &one_sample, 5),
        ("all zero", &all_zero, 6),
    ];
    for (name, spoil, charts) in cases {
        let mut input = synthetic_input();
        input.knee = None;
        spoil(&mut input.result);
        let (_dir, files) = write(&input);
        assert_eq!(files.svg_charts.len(), charts, "{name}");
        let svgs: Vec<String> = files.svg_charts.iter().map(|p| read(p)).collect();
        match name {
            "one sample" => {
                // One second still has something to show, as a dot.
                let latency = &svgs[0];
                assert!(!latency.contains("no data"), "{name}: one sample is data");
                assert!(
                    latency.contains("<circle"),
                    "{name}: a lone sample is drawn as a dot"
                );
            }
            _ => {
                for (svg, path) in svgs.iter().zip(&files.svg_charts) {
                    assert!(
                        svg.contains("no data"),
                        "{name}: {} should say no data",
                        path.display()
                    );
                }
            }
        }
        for png in &files.png_charts {
            let bytes = std::fs::read(png).expect("read the PNG");
            assert_eq!(png_size(&bytes), CHART_SIZE, "{name}: {}", png.display());
        }
        assert!(
            read(&files.html).contains("<table class=\"verdicts\">"),
            "{name}"
        );
    }
}

#[test]
fn invalid_runs_are_announced_first() {
    let mut input = synthetic_input();
    input.result.generator.saturated = true;
    input.result.generator.reason =
        Some("generator CPU above 95 % of 2 cores for 40 s".to_string());
    input.result.limits_hit = vec!["open files: 1,024 (soft limit)".to_string()];
    input.result.completed = false;
    input.result.ended_because = Some("interrupted by Ctrl-C".to_string());
    let (_dir, files) = write(&input);

    let html = read(&files.html);
    let banner = html
        .find("class=\"banner invalid\"")
        .expect("an invalid-run banner");
    assert!(
        banner < html.find("<table class=\"verdicts\">").expect("verdicts"),
        "banner comes first"
    );
    assert!(html.contains("Invalid run: the load generator saturated"));
    assert!(html.contains("generator CPU above 95 % of 2 cores for 40 s"));
    assert!(html.contains("Host limits were reached"));
    assert!(html.contains("interrupted: interrupted by Ctrl-C"));

    let md = read(&files.markdown);
    assert!(
        md.contains("> **Invalid run: the load generator saturated.**"),
        "{md}"
    );
    assert!(md.contains("> **Host limits were reached.**"));
    assert!(md.contains("> **The run did not complete.**"));
}

/// Runs `command`, killing it after `timeout`; returns (success, stdout,
/// stderr).
fn run_with_timeout(command: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read both pipes on threads so a large DOM cannot fill a pipe and
    // stall the browser while we wait for it to exit.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    (status.success(), stdout, stderr)
}

#[test]
fn html_renders_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (apt-get install chromium)"
        );
        eprintln!("skipped html_renders_in_headless_chromium: /usr/bin/chromium is not installed");
        return;
    }
    let input = synthetic_input();
    let (dir, files) = write(&input);
    let url = format!("file://{}", files.html.display());
    let browser = |profile: &str| {
        let mut c = Command::new(chromium);
        c.args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
        ])
        .args([
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,2000",
        ])
        // A profile of its own, so parallel or leftover browsers do not
        // lock each other out.
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join(profile).display()
        ));
        c
    };

    let shot = dir.path().join("shot.png");
    let (ok, _, stderr) = run_with_timeout(
        browser("profile-shot")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url),
        Duration::from_secs(90),
    );
    assert!(ok, "chromium --screenshot failed: {stderr}");
    let bytes = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {stderr}"));
    assert_eq!(png_size(&bytes), (1280, 2000));
    // A rendered page of tables, banners and charts compresses to far more
    // than a blank or error page does.
    assert!(
        bytes.len() > 50_000,
        "the screenshot looks empty ({} bytes)",
        bytes.len()
    );

    let (ok, dom, stderr) = run_with_timeout(
        browser("profile-dom").arg("--dump-dom").arg(&url),
        Duration::from_secs(90),
    );
    assert!(ok, "chromium --dump-dom failed: {stderr}");
    assert!(
        dom.contains("<table class=\"verdicts\">"),
        "the verdict table is in the DOM"
    );
    assert!(dom.contains("delivery correctness at 20,000 users"));
    assert_eq!(
        dom.matches("<svg").count(),
        6,
        "the browser parsed every inline chart"
    );
}

/// Every `results.json` committed under `sizing/` (each written by an earlier
/// build) still loads, so a planner can compare a new run against any of
/// them with `--baseline`; those written before the machine's clock and kind
/// were recorded load with neither, and a claim verdict is still computed.
#[test]
fn committed_results_still_load_as_baselines() {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable directory") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().is_some_and(|n| n == "results.json") {
                found.push(path);
            }
        }
    }
    let mut found: Vec<PathBuf> = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("sizing"),
        &mut found,
    );
    assert!(found.len() >= 10, "only {} committed results", found.len());
    let mut claims = 0;
    for path in &found {
        let run: RunResult =
            serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            !run.steps.is_empty() || !run.completed,
            "{}",
            path.display()
        );
        if run.claim.is_some() {
            let v = scenarios::verdict::claim_verdict(&run).expect("a claim verdict");
            assert!(!v.why.is_empty(), "{}", path.display());
            claims += 1;
        }
    }
    assert!(claims > 0, "no committed run verifies a claim");
}
