/*
 * Compiled so that its skeleton carries the constants of the shared BPF headers to user
 * space (src/model/layout), instead of Rust copies kept equal by hand. The agent never
 * loads it; tests load it to run the headers' functions in the kernel and compare them
 * with their user-space halves.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "periscope.h"
#include "histogram.h"
#include "native.h"
#include "process.h"
#include "tenants.h"

PSC_EXPORT_TYPES(enum psc_hist_layout, enum psc_native_layout, enum psc_process_layout,
		 enum psc_tenant_layout);

/* Values to bucket and their buckets, for the self-test below. */
#define PSC_SELFTEST_VALUES 64
const volatile __u64 native_thresholds[PSC_NATIVE_THRESHOLDS] = {};
const volatile __u32 native_schema = 0;
__u64 native_values[PSC_SELFTEST_VALUES] = {};
__u32 native_buckets[PSC_SELFTEST_VALUES] = {};

/* One value per call: bpf_loop has the verifier check the body once, not per value. */
static long bucket_one(__u32 i, void *ctx)
{
	if (i >= PSC_SELFTEST_VALUES)
		return 1;
	native_buckets[i] = psc_native_bucket(native_values[i], native_thresholds, native_schema);
	return 0;
}

SEC("syscall")
int psc_native_selftest(void *ctx)
{
	bpf_loop(PSC_SELFTEST_VALUES, bucket_one, NULL, 0);
	return 0;
}

/* The slots of the same values in a window of `window_slot_count` slots from
 * `window_low_octave` (bpf/histogram.h, with psc_native_thresholds). */
const volatile __u32 window_low_octave = 0;
const volatile __u32 window_slot_count = 2;
__u32 window_slots[PSC_SELFTEST_VALUES] = {};

static long window_one(__u32 i, void *ctx)
{
	if (i >= PSC_SELFTEST_VALUES)
		return 1;
	window_slots[i] = psc_hist_window_slot(native_values[i], window_low_octave,
					       window_slot_count);
	return 0;
}

SEC("syscall")
int psc_window_selftest(void *ctx)
{
	bpf_loop(PSC_SELFTEST_VALUES, window_one, NULL, 0);
	return 0;
}

char LICENSE[] SEC("license") = PSC_LICENSE;
