/*
 * Log-linear histogram buckets, computed in the kernel.
 *
 * Values 0..3 get a bucket each. A value v >= 4 whose highest set bit is e
 * lands in bucket (e - 1) * 4 + s, where s is the two bits below the highest
 * one: four sub-buckets per power of two. Bucket i >= 4 therefore covers
 *   [(4 + s) << (e - 2), ((5 + s) << (e - 2)) - 1]   with e = i / 4 + 1, s = i % 4
 * and is at most a quarter as wide as its lower bound. The last bucket also
 * takes every larger value. User space (src/model/histogram.rs) holds the
 * inverse of this function, with the constants below from the skeleton.
 */
#pragma once

/* An enum, not macros: user space takes the values from the skeleton (src/model/layout). */
enum psc_hist_layout {
	PSC_HIST_SUB_BITS = 2,
	PSC_HIST_BUCKETS = 148, /* e up to 37: 2^37 ns is about 137 s */
};

struct psc_hist {
	__u64 sum;
	__u64 buckets[PSC_HIST_BUCKETS];
};

static __always_inline __u32 psc_log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

static __always_inline __u32 psc_hist_bucket(__u64 v)
{
	__u32 e, sub, idx;

	if (v < (1 << PSC_HIST_SUB_BITS))
		return v;
	e = psc_log2_u64(v);
	sub = (v >> (e - PSC_HIST_SUB_BITS)) & ((1 << PSC_HIST_SUB_BITS) - 1);
	idx = ((e - 1) << PSC_HIST_SUB_BITS) + sub;
	if (idx >= PSC_HIST_BUCKETS)
		idx = PSC_HIST_BUCKETS - 1;
	return idx;
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
