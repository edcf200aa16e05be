//! Drawing `sluice top`'s full-screen view with ratatui: a header, the queue's figures,
//! completion and failure sparklines over the last minutes, the workers and the tenant
//! backlogs (as many rows as fit, and how many did not), and a status line that shows
//! the last Redis error while the figures stay.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};

use super::history::{History, Rates};
use super::sample::{Sample, age};

/// What the view says about itself in its header.
#[derive(Clone, Debug)]
pub struct Header {
    /// The queue shown.
    pub queue: String,
    /// How often it is read.
    pub interval: Duration,
}

/// Draws the whole view into `frame`.
pub fn draw(frame: &mut Frame, header: &Header, history: &History) {
    let area = frame.area();
    let empty = Sample::default();
    let sample = history.latest().unwrap_or(&empty);
    let figures = figure_lines(sample, area.width.saturating_sub(2));
    let [top, figures_area, sparks, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(
            u16::try_from(figures.len())
                .unwrap_or(u16::MAX)
                .saturating_add(2),
        ),
        Constraint::Length(7),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("sluice top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  queue {}  every {}  (q to quit)",
                header.queue,
                humantime::format_duration(header.interval)
            )),
        ])),
        top,
    );
    frame.render_widget(
        Paragraph::new(figures).block(Block::bordered().title(" queue ")),
        figures_area,
    );
    let [completed, failed] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    sparkline(
        frame,
        completed,
        history,
        "completed/s",
        Color::Green,
        |r| r.completed,
    );
    sparkline(frame, failed, history, "failures/s", Color::Red, |r| {
        r.failed
    });
    let [workers, tenants] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);
    frame.render_widget(workers_table(sample, workers.height), workers);
    frame.render_widget(tenants_table(sample, tenants.height), tenants);
    let line = match history.error() {
        Some(error) => Line::styled(
            format!("Redis: {error} (figures from the last good reading; retrying)"),
            Style::new().fg(Color::Red),
        ),
        None if history.latest().is_none() => Line::raw("reading the queue…"),
        None => Line::raw(""),
    };
    frame.render_widget(Paragraph::new(line), status);
}

/// The figures as `label value` items packed into lines of at most `width` columns.
fn figure_lines(sample: &Sample, width: u16) -> Vec<Line<'static>> {
    let width = usize::from(width.max(1));
    let mut lines: Vec<Vec<Span<'static>>> = vec![Vec::new()];
    let mut used = 0;
    for (label, value) in sample.figures() {
        let len = label.len() + 1 + value.len();
        let gap = if used == 0 { 0 } else { 3 };
        if used > 0 && used + gap + len > width {
            lines.push(Vec::new());
            used = 0;
        }
        let current = lines.last_mut().expect("one line at least");
        if used > 0 {
            current.push(Span::raw("   "));
            used += 3;
        }
        current.push(Span::raw(format!("{label} ")));
        current.push(Span::styled(
            value,
            Style::new().add_modifier(Modifier::BOLD),
        ));
        used += len;
    }
    lines.into_iter().map(Line::from).collect()
}

/// One rate over the last minutes, newest on the right, titled with its current and
/// highest values.
fn sparkline(
    frame: &mut Frame,
    area: Rect,
    history: &History,
    name: &str,
    color: Color,
    pick: fn(&Rates) -> f64,
) {
    let width = usize::from(area.width.saturating_sub(2));
    let all: Vec<f64> = history.rates().map(|r| pick(&r)).collect();
    let shown = &all[all.len().saturating_sub(width)..];
    let now = history.current().map_or(0.0, |r| pick(&r));
    let max = shown.iter().copied().fold(0.0, f64::max);
    // Hundredths, so rates below one a second still draw.
    let bars: Vec<u64> = shown.iter().map(|r| (r * 100.0).round() as u64).collect();
    let title = format!(" {name} {now:.1} (max {max:.1}) ");
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(title))
            .data(bars)
            .style(Style::new().fg(color)),
        area,
    );
}

/// How many of `total` rows fit a bordered table `height` high with a header, and
/// whether a last row must say how many were left out.
fn fitting(total: usize, height: u16) -> (usize, bool) {
    let room = usize::from(height.saturating_sub(3));
    if total <= room {
        (total, false)
    } else {
        (room.saturating_sub(1), true)
    }
}

/// A bordered table of as many `items` as fit `height` (their `left_out` count
/// beyond), one `row` each, ending in `… N more` when some do not fit.
fn listing<T>(
    items: &[T],
    left_out: usize,
    height: u16,
    row: impl Fn(&T) -> Row<'static>,
    (widths, header): (&[Constraint], &[&'static str]),
    title: String,
) -> Table<'static> {
    let total = items.len() + left_out;
    let (shown, more) = fitting(total, height);
    let mut rows: Vec<Row<'static>> = items.iter().take(shown).map(row).collect();
    if more {
        rows.push(Row::new(vec![format!("… {} more", total - shown)]));
    }
    Table::new(rows, widths.to_vec())
        .header(Row::new(header.to_vec()).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
}

fn workers_table(sample: &Sample, height: u16) -> Table<'static> {
    listing(
        &sample.workers,
        sample.workers_left_out,
        height,
        |w| {
            let state = if w.live { "live" } else { "gone" };
            let style = if w.live {
                Style::new()
            } else {
                Style::new().fg(Color::Yellow)
            };
            Row::new(vec![
                w.name.clone(),
                state.to_owned(),
                w.pending.to_string(),
                age(Duration::from_millis(w.idle_ms)),
            ])
            .style(style)
        },
        (
            &[
                Constraint::Min(12),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
            &["worker", "state", "leased", "idle"],
        ),
        format!(" workers ({} live) ", sample.live_workers()),
    )
}

fn tenants_table(sample: &Sample, height: u16) -> Table<'static> {
    listing(
        &sample.tenants,
        sample.tenants_left_out,
        height,
        |t| {
            Row::new(vec![
                t.tenant.clone(),
                t.backlog.to_string(),
                t.inflight.to_string(),
            ])
        },
        (
            &[
                Constraint::Min(12),
                Constraint::Length(9),
                Constraint::Length(9),
            ],
            &["tenant", "backlog", "in flight"],
        ),
        format!(" {} ", tenant_title(sample)),
    )
}

/// `tenants (N waiting, M in flight)`, and `(incomplete)` when the reading was capped.
pub(super) fn tenant_title(sample: &Sample) -> String {
    let backlog: u64 = sample.tenants.iter().map(|t| t.backlog).sum();
    let inflight: u64 = sample.tenants.iter().map(|t| t.inflight).sum();
    let capped = if sample.tenants_capped {
        " (incomplete)"
    } else {
        ""
    };
    format!("tenants ({backlog} waiting, {inflight} in flight){capped}")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::top::sample::{TenantRow, WorkerRow};

    fn screen(width: u16, height: u16, history: &History) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let header = Header {
            queue: "jobs".into(),
            interval: Duration::from_secs(1),
        };
        terminal.draw(|f| draw(f, &header, history)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn the_view_shows_the_figures_workers_and_the_tenants_that_fit() {
        let mut h = History::new();
        let sample = Sample {
            ready: 5,
            delayed: 2,
            workers: vec![WorkerRow {
                name: "w1".into(),
                live: true,
                pending: 3,
                idle_ms: 20,
            }],
            tenants: (0..40)
                .map(|i| TenantRow {
                    tenant: format!("t{i:02}"),
                    backlog: 100 - i,
                    inflight: 1,
                })
                .collect(),
            ..Sample::default()
        };
        h.record(Instant::now(), sample);
        let text = screen(100, 30, &h);
        assert!(text.contains("ready 5"), "{text}");
        assert!(text.contains("delayed 2"), "{text}");
        assert!(text.contains("w1"), "{text}");
        assert!(text.contains("t00"), "{text}");
        assert!(text.contains("more"), "{text}");
        assert!(!text.contains("t39"), "{text}");
        h.record_error("connection refused".into());
        let text = screen(100, 30, &h);
        assert!(text.contains("Redis: connection refused"), "{text}");
        assert!(text.contains("ready 5"), "{text}");
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let h = History::new();
        for (w, hgt) in [(1, 1), (10, 3), (20, 40), (200, 5)] {
            screen(w, hgt, &h);
        }
    }
}
