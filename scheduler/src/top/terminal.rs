//! `sluice top`'s full-screen loop: the terminal in raw mode on the alternate screen,
//! a reading every interval (in its own task, so a slow or absent Redis never delays a
//! key), redrawn on every reading and on resize; `q`, Esc, Ctrl-C, SIGINT and SIGTERM
//! end it with the terminal restored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::history::History;
use super::render::{Header, draw};
use super::source::Source;

/// How long the key reader waits for an event before looking whether it should stop.
const KEY_POLL: Duration = Duration::from_millis(200);

/// Restores the terminal (raw mode off, main screen, cursor shown) when dropped, on
/// every way out of the loop.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = ratatui::try_restore();
    }
}

/// Whether `key` ends the view: `q`, Esc or Ctrl-C (raw mode turns Ctrl-C into a key).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Shows the view until the user quits; an error only when the terminal fails.
pub async fn run(mut source: Source, header: Header) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (sample_tx, mut samples) = mpsc::channel(2);
    let every = header.interval;
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let reading = source
                .read()
                .await
                .map_err(|e| sluice_shared::error_text::joined(e.chain()));
            if sample_tx.send((Instant::now(), reading)).await.is_err() {
                return;
            }
        }
    });
    let _restore = Restore;
    let mut terminal = ratatui::try_init()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (key_tx, mut keys) = mpsc::unbounded_channel();
    let reader = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            while !stop.load(Ordering::Relaxed) {
                let next = match event::poll(KEY_POLL) {
                    Ok(false) => continue,
                    Ok(true) => event::read(),
                    Err(e) => Err(e),
                };
                let failed = next.is_err();
                if key_tx.send(next).is_err() || failed {
                    return;
                }
            }
        }
    });
    let mut history = History::new();
    let outcome = loop {
        if let Err(e) = terminal.draw(|frame| draw(frame, &header, &history)) {
            break Err(anyhow::Error::new(e).context("drawing the view"));
        }
        tokio::select! {
            Some((at, reading)) = samples.recv() => match reading {
                Ok(sample) => history.record(at, sample),
                Err(error) => history.record_error(error),
            },
            key = keys.recv() => match key {
                Some(Ok(Event::Key(key))) if quits(&key) => break Ok(()),
                // A resize (or any other event) redraws at the next turn.
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading the terminal")),
                None => break Err(anyhow::anyhow!("the terminal's key reader stopped")),
            },
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    sampler.abort();
    drop(terminal);
    drop(_restore);
    let _ = reader.join();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_esc_and_ctrl_c_quit_and_nothing_else_does() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
