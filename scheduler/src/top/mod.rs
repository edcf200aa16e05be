//! `sluice top`: a live full-screen view of one queue for a person without Grafana:
//! ready / in flight / delayed / dead, the oldest ready job's age, completion and
//! failure rates as sparklines over the last minutes, the workers with their leased
//! jobs and idle times, and the tenants (backlog, in flight) that fit. `--once` prints one reading
//! as plain text.
//!
//! - [`sample`]: one reading of the queue and the figures both views print.
//! - [`history`]: the view's state: the latest reading, the rates between readings,
//!   the last error.
//! - [`source`]: connecting (and connecting again) to the queue.
//! - [`render`]: drawing the full-screen view; [`text`]: the `--once` frame.
//! - [`terminal`]: the full-screen loop (keys, signals, resize, restoring the terminal).

pub mod history;
pub mod render;
pub mod sample;
pub mod source;
pub mod terminal;
pub mod text;

pub use history::History;
pub use render::Header;
pub use sample::Sample;
pub use source::Source;
