/*
 * The histograms probes keep in the kernel: one counter per native (exponential)
 * bucket at the finest schema the kernel buckets at (bpf/native.h), and the exact sum.
 * User space merges them into any coarser schema for Prometheus native histograms and
 * OTLP exponential ones, and counts them into configured classic buckets
 * (src/model/native.rs).
 *
 * Slot 0 is the zero bucket; slot i > 0 is kernel bucket i of bpf/native.h. Values up
 * to 2^(145/8) s of nanoseconds (about 79 hours), or 2^48 bytes, get their own bucket;
 * larger ones are counted in the top one (their sum stays exact). The http probe keeps
 * arrays of PSC_HIST_BUCKETS slots of its own, for durations and body sizes.
 */
#pragma once

#include "native.h"

/* An enum, not macros: user space takes the values from the skeleton (src/model/layout). */
enum psc_hist_layout {
	PSC_HIST_TOP_OCTAVE = 47,
	PSC_HIST_BUCKETS = 2 + (PSC_HIST_TOP_OCTAVE + 1) * PSC_NATIVE_THRESHOLDS,
};

struct psc_hist {
	__u64 sum;
	__u64 buckets[PSC_HIST_BUCKETS];
};

/* The thresholds of PSC_NATIVE_MAX_SCHEMA, set by user space before load. */
const volatile __u64 psc_native_thresholds[PSC_NATIVE_THRESHOLDS] = {};

static __always_inline __u32 psc_hist_bucket(__u64 v)
{
	__u32 idx = psc_native_bucket(v, psc_native_thresholds, PSC_NATIVE_MAX_SCHEMA);

	return idx < PSC_HIST_BUCKETS ? idx : PSC_HIST_BUCKETS - 1;
}

/* The slot of `v` in a histogram that counts only the octaves of nanoseconds from
 * `low_octave` up, in `slots` slots: 0 for 0, else 1 + its kernel bucket's place from
 * the one that holds 2^low_octave; one below counts in slot 1, one above in the last. */
static __always_inline __u32 psc_hist_window_slot(__u64 v, __u32 low_octave, __u32 slots)
{
	__u32 first = 1 + (low_octave << PSC_NATIVE_MAX_SCHEMA), idx;

	if (v == 0)
		return 0;
	idx = psc_native_bucket(v, psc_native_thresholds, PSC_NATIVE_MAX_SCHEMA);
	idx = idx > first ? idx - first + 1 : 1;
	return idx < slots ? idx : slots - 1;
}

/* For histograms in shared (not per-CPU) maps: atomic, so CPUs never lose an update. */
static __always_inline void psc_hist_record_atomic(struct psc_hist *h, __u64 v)
{
	__u32 idx = psc_hist_bucket(v);

	if (idx >= PSC_HIST_BUCKETS)
		return;
	__sync_fetch_and_add(&h->buckets[idx], 1);
	__sync_fetch_and_add(&h->sum, v);
}
