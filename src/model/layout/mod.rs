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

use skel::types::{
    psc_hist_layout, psc_loglin_layout, psc_native_layout, psc_process_layout, psc_tenant_layout,
};

/// Sub-buckets per power of two of the kernel's log-linear buckets, as bits.
pub const LOGLIN_SUB_BITS: u32 = psc_loglin_layout::PSC_LOGLIN_SUB_BITS.0;
/// Log-linear buckets the kernel tells apart.
pub const LOGLIN_BUCKETS: usize = psc_loglin_layout::PSC_LOGLIN_BUCKETS.0 as usize;
/// Slots of the kernel's duration histograms (`bpf/histogram.h`): the zero bucket and
/// one per native bucket at `NATIVE_MAX_SCHEMA`.
pub const HIST_BUCKETS: usize = psc_hist_layout::PSC_HIST_BUCKETS.0 as usize;
/// The finest native-histogram schema the kernel buckets at (`bpf/native.h`).
pub const NATIVE_MAX_SCHEMA: u8 = psc_native_layout::PSC_NATIVE_MAX_SCHEMA.0 as u8;
/// A process's generation counts its start time in units of 2^GENERATION_SHIFT ns.
pub const GENERATION_SHIFT: u32 = psc_process_layout::PSC_GENERATION_SHIFT.0;
/// Tenant slots the BPF programs tell apart, with slot 0 for processes of no tenant.
pub const MAX_TENANT_SLOTS: u32 = psc_tenant_layout::PSC_MAX_TENANT_SLOTS.0;
/// The slot user space gives the cgroups of a dropped tenant.
pub const TENANT_DROPPED: u32 = psc_tenant_layout::PSC_TENANT_DROPPED.0;
/// Keyed maps a program shares among tenants, at most.
pub const TENANT_MAPS: u32 = psc_tenant_layout::PSC_TENANT_MAPS.0;

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use super::skel::LayoutSkelBuilder;
    use super::NATIVE_MAX_SCHEMA;
    use crate::model::native;

    /// Values on and around every boundary of every power of two, and the extremes.
    fn edge_values(schema: u8) -> Vec<u64> {
        let mut values = vec![
            0,
            1,
            2,
            3,
            u64::MAX,
            u64::MAX - 1,
            1_000_000_000,
            999_999_999,
        ];
        for octave in 0..64u32 {
            values.push(1 << octave);
            values.push((1u64 << octave).wrapping_sub(1));
            for &threshold in native::thresholds(schema) {
                let floor = threshold >> (63 - octave);
                values.extend([floor, floor.saturating_add(1), floor.saturating_sub(1)]);
            }
        }
        values
    }

    /// The kernel's buckets (`bpf/native.h`, run in a syscall program) are the exact ones
    /// of user space at every schema the kernel takes.
    #[test]
    fn the_kernel_buckets_every_edge_value_as_user_space_does() {
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading a BPF program needs root");
            return;
        }
        for schema in 0..=NATIVE_MAX_SCHEMA {
            let mut object = MaybeUninit::uninit();
            let mut open = LayoutSkelBuilder::default()
                .open(&mut object)
                .expect("the layout object opens");
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                rodata.native_schema = u32::from(schema);
                for (slot, &threshold) in rodata
                    .native_thresholds
                    .iter_mut()
                    .zip(native::thresholds(schema))
                {
                    *slot = threshold;
                }
            }
            let mut skel = open.load().expect("the self-test loads");
            for chunk in edge_values(schema).chunks(64) {
                let bss = skel.maps.bss_data.as_deref_mut().expect("a mapped .bss");
                bss.native_values = [0; 64];
                bss.native_values[..chunk.len()].copy_from_slice(chunk);
                skel.progs
                    .psc_native_selftest
                    .test_run(libbpf_rs::ProgramInput::default())
                    .expect("the self-test runs");
                let bss = skel.maps.bss_data.as_deref().expect("a mapped .bss");
                for (i, &value) in chunk.iter().enumerate() {
                    let kernel = native::from_kernel(bss.native_buckets[i], schema);
                    assert_eq!(
                        kernel,
                        native::bucket(value, schema),
                        "{value} ns at schema {schema}"
                    );
                }
            }
        }
    }
}
