//! Constants that BPF programs and user space must agree on, taken from the shared BPF
//! headers through the skeleton of `layout.bpf.c`, an object that is never loaded. A
//! change to a header changes these with it; nothing is copied by hand.

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/layout.skel.rs"));
}

use skel::types::{psc_hist_layout, psc_process_layout, psc_tenant_layout};

/// Sub-buckets per power of two of the kernel's log-linear histograms, as bits.
pub const HIST_SUB_BITS: u32 = psc_hist_layout::PSC_HIST_SUB_BITS.0;
/// Buckets of the kernel's log-linear histograms.
pub const HIST_BUCKETS: usize = psc_hist_layout::PSC_HIST_BUCKETS.0 as usize;
/// A process's generation counts its start time in units of 2^GENERATION_SHIFT ns.
pub const GENERATION_SHIFT: u32 = psc_process_layout::PSC_GENERATION_SHIFT.0;
/// Tenant slots the BPF programs tell apart, with slot 0 for processes of no tenant.
pub const MAX_TENANT_SLOTS: u32 = psc_tenant_layout::PSC_MAX_TENANT_SLOTS.0;
/// The slot user space gives the cgroups of a dropped tenant.
pub const TENANT_DROPPED: u32 = psc_tenant_layout::PSC_TENANT_DROPPED.0;
/// Keyed maps a program shares among tenants, at most.
pub const TENANT_MAPS: u32 = psc_tenant_layout::PSC_TENANT_MAPS.0;
