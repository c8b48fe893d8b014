/* Types shared by syscalls.bpf.c and its Rust loader (through the skeleton's generated types). */
#pragma once

#include "periscope.h"
#include "histogram.h"
#include "process.h"

/* A process is its tgid and its generation (process.h). */
struct psc_syscall_key {
	__u32 tgid;
	__u16 nr;
	__u16 gen;
};

struct psc_syscall_error_key {
	__u32 tgid;
	__u16 nr;
	__u16 gen;
	__u32 err;
};


/* Key of the overflow errors map: errors of processes that found the errors map, or
 * their tenant's share of it (bpf/tenants.h), full. */
struct psc_syscall_nr_err {
	__u16 nr;
	__u16 tenant;
	__u32 err;
};

/* The keyed maps tenants share (bpf/tenants.h). */
enum psc_syscall_share {
	PSC_SHARE_COUNTS = 0,
	PSC_SHARE_ERRORS = 1,
	PSC_SHARE_LATENCY = 2,
};

/*
 * A slot of the per-CPU count table, the hot path's first level: process (tgid and
 * generation) and syscall of the counted pair (nr_plus_one == 0 marks a free slot) and
 * its count on that CPU.
 */
struct psc_fast_slot {
	__u32 tgid;
	__u16 nr_plus_one;
	__u16 gen;
	__u64 count;
};

struct psc_syscall_start {
	__u64 ts;
	__u32 nr;
	__u32 pad;
};

/* Slots of the `folded` array: new keys a full map refused, by map. Each refusal sent a
 * call, with its error and latency, to an overflow series. */
enum psc_syscall_folded_slot {
	PSC_FOLDED_COUNTS = 0,
	PSC_FOLDED_ERRORS = 1,
	PSC_FOLDED_LATENCY = 2,
	PSC_FOLDED_OVERFLOW_ERRORS = 3,
	PSC_FOLDED_START = 4, /* a thread's start slot could not be created: that call is counted, not timed */
	PSC_FOLDED_SLOTS = 5,
};
