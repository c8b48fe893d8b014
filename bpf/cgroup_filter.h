/*
 * The cgroups whose processes a program skips: those of dropped tenants. Included by
 * each program that aggregates per process, so a dropped tenant costs one cgroup read
 * and, most of the time, one inlined per-CPU array lookup per event, and nothing else.
 * Off (filter_cgroups == 0), it costs nothing.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Set by user space before load when some tenant is dropped. */
const volatile __u8 filter_cgroups = 0;

/* Bumped by user space after each change of skipped_cgroups: cached verdicts older
 * than it are asked again. */
__u32 skipped_cgroups_version = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} skipped_cgroups SEC(".maps");

/* The last cgroup each CPU saw, and whether it is skipped: consecutive events mostly
 * come from the same cgroup, and an array lookup is inlined where a hash lookup costs
 * a call. */
struct psc_cgroup_verdict {
	__u64 id;
	__u32 version;
	__u8 skip;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct psc_cgroup_verdict);
} cgroup_verdicts SEC(".maps");

/* The task's cgroup v2 id, read through its pointers rather than a helper call. */
static __always_inline __u64 psc_task_cgroup_id(struct task_struct *task)
{
	struct css_set *cgroups = task->cgroups;

	if (!cgroups)
		return 0;
	return cgroups->dfl_cgrp->kn->id;
}

/* Whether the task's cgroup is skipped. Call only when filter_cgroups is set. */
static __always_inline int psc_cgroup_skipped(struct task_struct *task)
{
	struct psc_cgroup_verdict *verdict;
	__u32 zero = 0;
	__u64 id = psc_task_cgroup_id(task);
	__u32 version = skipped_cgroups_version;

	verdict = bpf_map_lookup_elem(&cgroup_verdicts, &zero);
	if (!verdict)
		return 0;
	if (verdict->id != id || verdict->version != version) {
		verdict->skip = bpf_map_lookup_elem(&skipped_cgroups, &id) != NULL;
		verdict->id = id;
		verdict->version = version;
	}
	return verdict->skip;
}
