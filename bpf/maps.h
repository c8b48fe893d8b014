/*
 * Map declarations in one line. Each macro expands to the anonymous struct that libbpf
 * reads from BTF, with the members in the order the long form writes them (type,
 * map_flags, max_entries, key, value), so a map is the same to the kernel and to the
 * skeleton, which knows it by `name`. Arrays are keyed by __u32, local storage by int.
 */
#pragma once

#include <bpf/bpf_helpers.h>

#define PSC_MAP(map_type, name, key_type, value_type, entries)	\
	struct {						\
		__uint(type, map_type);				\
		__uint(max_entries, entries);			\
		__type(key, key_type);				\
		__type(value, value_type);			\
	} name SEC(".maps")

#define PSC_MAP_FLAGS(map_type, flags, name, key_type, value_type, entries)	\
	struct {								\
		__uint(type, map_type);						\
		__uint(map_flags, flags);					\
		__uint(max_entries, entries);					\
		__type(key, key_type);						\
		__type(value, value_type);					\
	} name SEC(".maps")

#define PSC_ARRAY(name, value_type, entries) \
	PSC_MAP(BPF_MAP_TYPE_ARRAY, name, __u32, value_type, entries)
#define PSC_PERCPU_ARRAY(name, value_type, entries) \
	PSC_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, name, __u32, value_type, entries)
#define PSC_HASH(name, key_type, value_type, entries) \
	PSC_MAP(BPF_MAP_TYPE_HASH, name, key_type, value_type, entries)
#define PSC_PERCPU_HASH(name, key_type, value_type, entries) \
	PSC_MAP(BPF_MAP_TYPE_PERCPU_HASH, name, key_type, value_type, entries)
#define PSC_LRU_HASH(name, key_type, value_type, entries) \
	PSC_MAP(BPF_MAP_TYPE_LRU_HASH, name, key_type, value_type, entries)

/* A hash whose entries are allocated as they are added rather than all at load. */
#define PSC_HASH_NO_PREALLOC(name, key_type, value_type, entries) \
	PSC_MAP_FLAGS(BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC, name, key_type, value_type, entries)

/* Local storage: one value per task or socket, no size; the kernel requires NO_PREALLOC. */
#define PSC_LOCAL_STORAGE(map_type, name, value_type)	\
	struct {					\
		__uint(type, map_type);			\
		__uint(map_flags, BPF_F_NO_PREALLOC);	\
		__type(key, int);			\
		__type(value, value_type);		\
	} name SEC(".maps")

#define PSC_TASK_STORAGE(name, value_type) \
	PSC_LOCAL_STORAGE(BPF_MAP_TYPE_TASK_STORAGE, name, value_type)
#define PSC_SK_STORAGE(name, value_type) \
	PSC_LOCAL_STORAGE(BPF_MAP_TYPE_SK_STORAGE, name, value_type)

/* A ring buffer of `bytes` (a power of two, a multiple of the page size). */
#define PSC_RINGBUF(name, bytes)			\
	struct {					\
		__uint(type, BPF_MAP_TYPE_RINGBUF);	\
		__uint(max_entries, bytes);		\
	} name SEC(".maps")
