//! Small helpers shared by tasks.

/// Now in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// One line describing the machine: CPU model, cores, memory, kernel.
pub fn machine_summary() -> String {
    let m = loadgen::machine();
    format!(
        "{} cores ({}), {:.0} GiB, Linux {}",
        m.cores, m.cpu_model, m.memory_gib, m.kernel
    )
}
