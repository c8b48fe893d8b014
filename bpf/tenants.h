/*
 * Tenants in the kernel, for the programs that aggregate per process. User space tells
 * each program the tenant of every cgroup it knows (cgroup_tenants: a cgroup v2 id to a
 * tenant slot, or PSC_TENANT_DROPPED); a cgroup it does not know is of slot 0, no tenant.
 *
 * - Dropped tenants: with filter_cgroups set, a program skips their processes' events
 *   after one cgroup read and, most of the time, one inlined per-CPU array lookup.
 * - Shares: with tenant_slots > 1, each slot may hold at most tenant_share[map] entries
 *   of each keyed map. A slot whose share is full folds its new keys into its own
 *   overflow series, so one noisy tenant cannot fill a map that others need. The slot
 *   is only looked up where a key is created, never on the hot path.
 *
 * Off (no tenants), all of it compiles out.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "periscope.h"

enum psc_tenant_layout {
	/* The slot of a dropped tenant's cgroups. */
	PSC_TENANT_DROPPED = 0xffffffffu,
	/* Tenant slots at most: 63 tenants and slot 0, the processes of none. */
	PSC_MAX_TENANT_SLOTS = 64,
	/* Keyed maps a program shares between tenants, at most. */
	PSC_TENANT_MAPS = 4,
};

/* Set by user space before load. */
const volatile __u8 filter_cgroups = 0;
const volatile __u32 tenant_slots = 1;
const volatile __u32 tenant_share[PSC_TENANT_MAPS] = {};

/* Bumped by user space after each change of cgroup_tenants: cached verdicts older than
 * it are asked again. */
__u32 cgroup_tenants_version = 0;

/* Written by user space only, so allocated as it fills rather than up front. */
PSC_HASH_NO_PREALLOC(cgroup_tenants, __u64, __u32, 65536);

/* The last cgroup each CPU saw, and its tenant: consecutive events mostly come from the
 * same cgroup, and an array lookup is inlined where a hash lookup costs a call. */
struct psc_cgroup_verdict {
	__u64 id;
	__u32 version;
	__u32 tenant;
};

PSC_PERCPU_ARRAY(cgroup_verdicts, struct psc_cgroup_verdict, 1);

/*
 * Entries of each keyed map per slot, at index slot * PSC_TENANT_MAPS + map: those the
 * program added (tenant_added, written here only, atomically), and what user space
 * counted at its last read less the tenant_added it saw just before (tenant_base,
 * written by user space only). Their sum is the slot's entries now; entries user space
 * deletes are gone from its next count, so no count is ever shared by two writers.
 */
PSC_ARRAY(tenant_added, __s64, PSC_MAX_TENANT_SLOTS * PSC_TENANT_MAPS);

PSC_ARRAY(tenant_base, __s64, PSC_MAX_TENANT_SLOTS * PSC_TENANT_MAPS);

/* New keys a slot's full share refused, by slot and map. */
PSC_PERCPU_ARRAY(tenant_folded, __u64, PSC_MAX_TENANT_SLOTS * PSC_TENANT_MAPS);

/* The task's cgroup v2 id, read through its pointers rather than a helper call. */
static __always_inline __u64 psc_task_cgroup_id(struct task_struct *task)
{
	struct css_set *cgroups = task->cgroups;

	if (!cgroups)
		return 0;
	return cgroups->dfl_cgrp->kn->id;
}

/* The tenant of a cgroup: a slot, or PSC_TENANT_DROPPED. Without the per-CPU cache, for
 * programs that may interrupt one another on a CPU (softirqs). */
static __always_inline __u32 psc_cgroup_tenant_of(__u64 id)
{
	__u32 *tenant = bpf_map_lookup_elem(&cgroup_tenants, &id);

	return tenant ? *tenant : 0;
}

/* The slot a tenant's new keys count in: 0 without shares, or for a dropped tenant. */
static __always_inline __u32 psc_tenant_slot_of(__u32 tenant)
{
	return tenant_slots > 1 && tenant < tenant_slots ? tenant : 0;
}

/* The tenant of the task's cgroup: a slot, or PSC_TENANT_DROPPED. Process context only:
 * the per-CPU cache is not safe against a softirq's program on the same CPU. */
static __always_inline __u32 psc_cgroup_tenant(struct task_struct *task)
{
	struct psc_cgroup_verdict *verdict;
	__u32 zero = 0, *tenant;
	__u64 id = psc_task_cgroup_id(task);
	__u32 version = cgroup_tenants_version;

	verdict = bpf_map_lookup_elem(&cgroup_verdicts, &zero);
	if (!verdict)
		return 0;
	if (verdict->id != id || verdict->version != version) {
		tenant = bpf_map_lookup_elem(&cgroup_tenants, &id);
		verdict->tenant = tenant ? *tenant : 0;
		verdict->id = id;
		verdict->version = version;
	}
	return verdict->tenant;
}

/* Whether the task belongs to a dropped tenant. Call only when filter_cgroups is set. */
static __always_inline int psc_cgroup_skipped(struct task_struct *task)
{
	return psc_cgroup_tenant(task) == PSC_TENANT_DROPPED;
}

/* The slot whose share a new key of the task counts in: 0 without shares. */
static __always_inline __u32 psc_tenant_slot(struct task_struct *task)
{
	if (tenant_slots <= 1)
		return 0;
	return psc_tenant_slot_of(psc_cgroup_tenant(task));
}

/*
 * Takes a place in the slot's share of `map` for a new key: 0 when the share is full
 * (counted), and the key goes to the slot's overflow series. A key that then fails to
 * be created gives its place back (psc_tenant_release). Places taken at the same
 * moment on several CPUs may pass the share by as many; the map's own cap still holds.
 */
static __always_inline int psc_tenant_reserve(__u32 slot, __u32 map)
{
	__u32 idx = slot * PSC_TENANT_MAPS + map;
	__s64 *added, *base;

	if (tenant_slots <= 1 || map >= PSC_TENANT_MAPS)
		return 1;
	added = bpf_map_lookup_elem(&tenant_added, &idx);
	base = bpf_map_lookup_elem(&tenant_base, &idx);
	if (!added || !base)
		return 1;
	if (*base + *added >= (__s64)tenant_share[map]) {
		PSC_COUNT_IN(tenant_folded, idx);
		return 0;
	}
	__sync_fetch_and_add(added, 1);
	return 1;
}

static __always_inline void psc_tenant_release(__u32 slot, __u32 map)
{
	__u32 idx = slot * PSC_TENANT_MAPS + map;
	__s64 *added;

	if (tenant_slots <= 1)
		return;
	added = bpf_map_lookup_elem(&tenant_added, &idx);
	if (added)
		__sync_fetch_and_add(added, -1);
}
