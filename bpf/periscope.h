/* Definitions shared by every Periscope BPF program. */
#pragma once

#include "maps.h"

/* Licence of the BPF objects: helpers such as bpf_probe_read_kernel need a GPL-compatible one. */
#define PSC_LICENSE "Dual BSD/GPL"

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
