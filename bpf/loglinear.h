/*
 * Log-linear buckets, computed in the kernel: the http probe's classes of classic
 * histogram buckets are looked up by them (its tables map each log-linear bucket to the
 * configured `le` bucket that holds it).
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

#include "periscope.h"

/* An enum, not macros: user space takes the values from the skeleton (src/model/layout). */
enum psc_loglin_layout {
	PSC_LOGLIN_SUB_BITS = 2,
	PSC_LOGLIN_BUCKETS = 148, /* e up to 37: 2^37 ns is about 137 s */
};

static __always_inline __u32 psc_loglin_bucket(__u64 v)
{
	__u32 e, sub, idx;

	if (v < (1 << PSC_LOGLIN_SUB_BITS))
		return v;
	e = psc_log2_u64(v);
	sub = (v >> (e - PSC_LOGLIN_SUB_BITS)) & ((1 << PSC_LOGLIN_SUB_BITS) - 1);
	idx = ((e - 1) << PSC_LOGLIN_SUB_BITS) + sub;
	if (idx >= PSC_LOGLIN_BUCKETS)
		idx = PSC_LOGLIN_BUCKETS - 1;
	return idx;
}
