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

use skel::types::{psc_hist_layout, psc_native_layout, psc_process_layout, psc_tenant_layout};

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

    use super::skel::{LayoutSkelBuilder, OpenLayoutSkel};
    use super::NATIVE_MAX_SCHEMA;
    use crate::model::native;

    /// Values on and around every boundary of every power of two, and the extremes.
    fn edge_values(thresholds: &[u64]) -> Vec<u64> {
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
            for &threshold in thresholds {
                let floor = threshold >> (63 - octave);
                values.extend([floor, floor.saturating_add(1), floor.saturating_sub(1)]);
            }
        }
        values
    }

    /// Which function of the shared headers a self-test program runs on each value.
    #[derive(Clone, Copy)]
    enum SelfTest {
        /// `psc_native_bucket` of `bpf/native.h`: `psc_native_selftest`.
        Bucket,
        /// `psc_hist_window_slot` of `bpf/histogram.h`: `psc_window_selftest`.
        WindowSlot,
    }

    /// Loads the layout object with the constants `configure` sets, runs `test` in the
    /// kernel (a syscall program) on every value, 64 at a time, and returns its results.
    fn run_selftest(
        configure: impl FnOnce(&mut OpenLayoutSkel<'_>),
        test: SelfTest,
        values: &[u64],
    ) -> Vec<u32> {
        let mut object = MaybeUninit::uninit();
        let mut open = LayoutSkelBuilder::default()
            .open(&mut object)
            .expect("the layout object opens");
        configure(&mut open);
        let mut skel = open.load().expect("the self-test loads");
        let mut out = Vec::new();
        for chunk in values.chunks(64) {
            let bss = skel.maps.bss_data.as_deref_mut().expect("a mapped .bss");
            bss.native_values = [0; 64];
            bss.native_values[..chunk.len()].copy_from_slice(chunk);
            let program = match test {
                SelfTest::Bucket => &skel.progs.psc_native_selftest,
                SelfTest::WindowSlot => &skel.progs.psc_window_selftest,
            };
            program
                .test_run(libbpf_rs::ProgramInput::default())
                .expect("the self-test runs");
            let bss = skel.maps.bss_data.as_deref().expect("a mapped .bss");
            let results = match test {
                SelfTest::Bucket => &bss.native_buckets,
                SelfTest::WindowSlot => &bss.window_slots,
            };
            out.extend_from_slice(&results[..chunk.len()]);
        }
        out
    }

    /// Runs `bpf/native.h` in the kernel with `thresholds` at `schema` on every value,
    /// and returns the kernel bucket of each.
    fn kernel_buckets(schema: u8, thresholds: &[u64], values: &[u64]) -> Vec<u32> {
        let configure = |open: &mut OpenLayoutSkel<'_>| {
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                rodata.native_schema = u32::from(schema);
                for (slot, &threshold) in rodata.native_thresholds.iter_mut().zip(thresholds) {
                    *slot = threshold;
                }
            }
        };
        run_selftest(configure, SelfTest::Bucket, values)
    }

    /// Runs `psc_hist_window_slot` of `bpf/histogram.h` in the kernel on every value,
    /// with the nanosecond thresholds, for a window of `slots` slots from `low_octave`.
    fn kernel_window_slots(low_octave: u32, slots: u32, values: &[u64]) -> Vec<u32> {
        let configure = |open: &mut OpenLayoutSkel<'_>| {
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                rodata.window_low_octave = low_octave;
                rodata.window_slot_count = slots;
                rodata
                    .psc_native_thresholds
                    .copy_from_slice(native::Unit::Nanoseconds.kernel_thresholds());
            }
        };
        run_selftest(configure, SelfTest::WindowSlot, values)
    }

    /// A window histogram (the tcp probe's) read back by user space puts every value in
    /// its own native bucket when the window reaches it, and at the window's nearest end
    /// when not.
    #[test]
    fn a_window_of_kernel_slots_reads_back_as_the_native_buckets_of_its_values() {
        if !is_root() {
            return;
        }
        let thresholds = native::Unit::Nanoseconds.kernel_thresholds();
        let values = edge_values(thresholds);
        for (low_octave, slots) in [(9u32, 242usize), (10, 250), (0, 10)] {
            let kernel = kernel_window_slots(low_octave, slots as u32, &values);
            let first = 1 + ((low_octave as usize) << native::KERNEL_SCHEMA);
            let last = first + slots - 2;
            for (&value, slot) in values.iter().zip(kernel) {
                let slot = slot as usize;
                assert!(slot < slots, "{value} ns: slot {slot} of {slots}");
                let mut window = vec![0; slots - 1];
                if slot > 0 {
                    window[slot - 1] = 1;
                }
                let zero = u64::from(slot == 0);
                let hist = native::KernelHistogram::from_window(
                    native::Unit::Nanoseconds,
                    zero,
                    first,
                    &window,
                    value,
                );
                let want = native::kernel_slot(native::Unit::Nanoseconds, value);
                let want = if want == 0 {
                    0
                } else {
                    want.clamp(first, last)
                };
                assert_eq!(
                    hist.slot(want),
                    1,
                    "{value} ns, window from octave {low_octave}"
                );
                assert_eq!(hist.count(), 1);
            }
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid only reads the process's credentials.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: loading a BPF program needs root");
        }
        root
    }

    /// The kernel's byte buckets (the http probe's body sizes) are user space's.
    #[test]
    fn the_kernel_buckets_sizes_in_bytes_as_user_space_does() {
        if !is_root() {
            return;
        }
        let thresholds = native::Unit::Bytes.kernel_thresholds();
        let values = edge_values(thresholds);
        let kernel = kernel_buckets(NATIVE_MAX_SCHEMA, thresholds, &values);
        for (value, bucket) in values.iter().zip(kernel) {
            assert_eq!(
                (bucket as usize).min(native::KERNEL_SLOTS - 1),
                native::kernel_slot(native::Unit::Bytes, *value),
                "{value} bytes"
            );
        }
    }

    /// The kernel's buckets (`bpf/native.h`, run in a syscall program) are the exact ones
    /// of user space at every schema the kernel takes.
    #[test]
    fn the_kernel_buckets_every_edge_value_as_user_space_does() {
        if !is_root() {
            return;
        }
        for schema in 0..=NATIVE_MAX_SCHEMA {
            let thresholds = native::thresholds(schema);
            let values = edge_values(thresholds);
            let kernel = kernel_buckets(schema, thresholds, &values);
            for (&value, bucket) in values.iter().zip(kernel) {
                assert_eq!(
                    native::from_kernel(bucket, schema),
                    native::bucket(value, schema),
                    "{value} ns at schema {schema}"
                );
            }
        }
    }
}
