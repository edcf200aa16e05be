//! The one Prometheus text renderer both binaries serve at `/metrics`.

use prometheus::{Encoder, Registry, TextEncoder};

/// The `content-type` of [`render`]'s output (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every metric in `registry`, in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding a registry into a Vec cannot fail: families are well formed by
    // construction and writing to memory does not error.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
