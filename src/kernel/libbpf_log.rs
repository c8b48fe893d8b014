//! libbpf's own messages: routed into our log, and kept while a load attempt runs so
//! that the attempt can say which program the kernel refused.

use std::cell::RefCell;

thread_local! {
    /// libbpf's messages while a load attempt runs on this thread.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `attempt`, keeping the libbpf messages it causes on this thread; they are
/// logged at debug level only, since the attempt's outcome is logged in one line.
pub fn capture<T>(attempt: impl FnOnce() -> T) -> (T, Vec<String>) {
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let outcome = attempt();
    let log = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (outcome, log)
}

/// Keeps a libbpf message for the attempt running on this thread, if any; the agent's
/// libbpf log router calls it with every message. True when it was kept.
pub fn note_libbpf_message(message: &str) -> bool {
    CAPTURED.with(|c| match c.borrow_mut().as_mut() {
        Some(lines) => {
            // A refusal is named in the first lines; a verifier log can be long.
            if lines.len() < 4096 {
                lines.push(message.to_string());
            }
            true
        }
        None => false,
    })
}
