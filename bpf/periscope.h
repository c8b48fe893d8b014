/* Definitions shared by every Periscope BPF program. */
#pragma once

#include "maps.h"

/* Licence of the BPF objects: helpers such as bpf_probe_read_kernel need a GPL-compatible one. */
#define PSC_LICENSE "Dual BSD/GPL"

/*
 * Makes the skeleton generate Rust definitions of the types a program shares with user
 * space. It generates the types of the object's BTF, where clang puts only those that a
 * global, a map or a function names: each type listed (`struct x` or `enum x`, at most
 * 12) gets a zeroed global of its own in .bss, which no program reads.
 */
#define PSC_EXPORT_TYPES(...) \
	___bpf_apply(__PSC_EXPORT_, ___bpf_narg(__VA_ARGS__))(__VA_ARGS__)
#define __PSC_EXPORT(type) type ___bpf_apply(psc_exported_, __COUNTER__) = {}
#define __PSC_EXPORT_1(t) __PSC_EXPORT(t)
#define __PSC_EXPORT_2(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_1(__VA_ARGS__)
#define __PSC_EXPORT_3(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_2(__VA_ARGS__)
#define __PSC_EXPORT_4(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_3(__VA_ARGS__)
#define __PSC_EXPORT_5(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_4(__VA_ARGS__)
#define __PSC_EXPORT_6(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_5(__VA_ARGS__)
#define __PSC_EXPORT_7(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_6(__VA_ARGS__)
#define __PSC_EXPORT_8(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_7(__VA_ARGS__)
#define __PSC_EXPORT_9(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_8(__VA_ARGS__)
#define __PSC_EXPORT_10(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_9(__VA_ARGS__)
#define __PSC_EXPORT_11(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_10(__VA_ARGS__)
#define __PSC_EXPORT_12(t, ...) __PSC_EXPORT(t); __PSC_EXPORT_11(__VA_ARGS__)

#define PSC_COMM_LEN 16

/* Syscall numbers at or above this are ignored (x86_64 has fewer than 470). */
#define PSC_MAX_SYSCALLS 512

/* Highest errno the kernel returns as -errno from a syscall. */
#define PSC_MAX_ERRNO 4095

/* vmlinux.h has no errno values. */
#define PSC_EEXIST 17

/* Adds one to slot `idx` of a per-CPU u64 array: how a program counts what it refused. */
#define PSC_COUNT_IN(array_map, idx)                                   \
	do {                                                           \
		__u32 __psc_idx = (idx);                               \
		__u64 *__psc_slot = bpf_map_lookup_elem(&(array_map), &__psc_idx); \
		if (__psc_slot)                                        \
			*__psc_slot += 1;                              \
	} while (0)

/*
 * The value of `key` in a hash map, inserted as `initial` when absent; NULL when the map
 * is full. Another CPU may insert the key first (EEXIST): the second lookup finds it.
 * Needs bpf_helpers.h before it.
 */
static __always_inline void *psc_lookup_or_insert(void *map, const void *key, const void *initial)
{
	void *value = bpf_map_lookup_elem(map, key);

	if (value)
		return value;
	bpf_map_update_elem(map, key, initial, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* The index of the highest set bit of v (0 for 0 and 1). */
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
