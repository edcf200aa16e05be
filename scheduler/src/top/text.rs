//! `sluice top --once`: one reading as plain text, for scripts and for logs (the same
//! figures, workers and tenants the full-screen view shows, without rates: one
//! reading has none).

use std::fmt::Write as _;
use std::time::Duration;

use super::render::{Header, tenant_title};
use super::sample::{Sample, age};

/// One plain-text frame of `sample`.
pub fn frame(header: &Header, sample: &Sample) -> String {
    let mut out = format!("sluice top  queue {}\n", header.queue);
    let figures: Vec<String> = sample
        .figures()
        .into_iter()
        .map(|(label, value)| format!("{label} {value}"))
        .collect();
    let _ = writeln!(out, "{}", figures.join("  "));
    let _ = writeln!(out, "workers ({} live)", sample.live_workers());
    for w in &sample.workers {
        let _ = writeln!(
            out,
            "  {:<32} {:<4}  leased {:<6} idle {}",
            w.name,
            if w.live { "live" } else { "gone" },
            w.pending,
            age(Duration::from_millis(w.idle_ms))
        );
    }
    if sample.workers_left_out > 0 {
        let _ = writeln!(out, "  … {} more", sample.workers_left_out);
    }
    let _ = writeln!(out, "{}", tenant_title(sample));
    for t in &sample.tenants {
        let _ = writeln!(
            out,
            "  {:<32} backlog {:<6} in flight {}",
            t.tenant, t.backlog, t.inflight
        );
    }
    if sample.tenants_left_out > 0 {
        let _ = writeln!(out, "  … {} more", sample.tenants_left_out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::sample::TenantRow;

    #[test]
    fn the_frame_names_every_figure_and_tenant() {
        let header = Header {
            queue: "jobs".into(),
            interval: Duration::from_secs(1),
        };
        let sample = Sample {
            ready: 5,
            delayed: 2,
            tenants: vec![TenantRow {
                tenant: "acme".into(),
                backlog: 3,
                inflight: 2,
            }],
            ..Sample::default()
        };
        let text = frame(&header, &sample);
        assert!(text.contains("queue jobs"), "{text}");
        assert!(text.contains("ready 5  in flight 0  delayed 2"), "{text}");
        assert!(text.contains("tenants (3 waiting, 2 in flight)"), "{text}");
        assert!(text.contains("acme"), "{text}");
    }
}
