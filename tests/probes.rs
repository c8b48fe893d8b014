//! End-to-end tests that live in their probe's folder: every `src/probes/<name>/e2e.rs`,
//! found by build.rs. They drive the built binary as users do, like the rest of tests/.

mod common;

include!(concat!(env!("OUT_DIR"), "/probe_e2e.rs"));
