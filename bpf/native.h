/*
 * Native (exponential) histogram buckets, computed in the kernel: at schema s
 * (K = 2^s buckets per power of two) the bucket of a value v >= 1 ns is
 *   1 + e * K + (how many of the K thresholds lie below v << (63 - e))
 * with e the highest set bit of v; 0 is the zero bucket. The thresholds are the
 * per-octave mantissas of the boundaries 1e9 * 2^(i/K) ns, as 64-bit fixed point;
 * user space (src/model/native.rs) holds the exact tables and turns this index into
 * the native one. A bucket's top (e, K) and the next octave's first (e + 1, 0) are one
 * and the same index, as they are one native bucket.
 */
#pragma once

#include "periscope.h"

/* An enum, not macros: user space takes the values from the skeleton (src/model/layout). */
enum psc_native_layout {
	/* The finest schema the kernel buckets at: 8 thresholds per power of two. */
	PSC_NATIVE_MAX_SCHEMA = 3,
	PSC_NATIVE_THRESHOLDS = 1 << PSC_NATIVE_MAX_SCHEMA,
};

/* The count of the first 2^schema ascending thresholds below mantissa: a binary search
 * of at most PSC_NATIVE_MAX_SCHEMA halvings, then one last compare. */
static __always_inline __u32 psc_native_above(__u64 mantissa, const volatile __u64 *thresholds,
					      __u32 schema)
{
	__u32 pos = 0, step;

#pragma unroll
	for (int i = PSC_NATIVE_MAX_SCHEMA; i > 0; i--) {
		if ((__u32)i > schema)
			continue;
		step = 1U << (i - 1);
		if (thresholds[(pos + step - 1) & (PSC_NATIVE_THRESHOLDS - 1)] < mantissa)
			pos += step;
	}
	if (thresholds[pos & (PSC_NATIVE_THRESHOLDS - 1)] < mantissa)
		pos += 1;
	return pos;
}

static __always_inline __u32 psc_native_bucket(__u64 v, const volatile __u64 *thresholds,
					       __u32 schema)
{
	__u32 e;

	if (v == 0)
		return 0;
	if (schema > PSC_NATIVE_MAX_SCHEMA)
		schema = PSC_NATIVE_MAX_SCHEMA;
	e = psc_log2_u64(v);
	return 1 + (e << schema) + psc_native_above(v << (63 - e), thresholds, schema);
}
