/*
 * What user space needs to know of a process that may be gone before it reads /proc:
 * its name and its cgroup v2, which tells its container.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "periscope.h"

/* Long enough for `cri-containerd-<64 hex digits>.scope` and for
 * `kubepods-burstable-pod<uid>.slice`. */
#define PSC_CGROUP_NAME_LEN 96

/*
 * A cgroup's id and the names of its directory and of its parent's. Container runtimes
 * name the container in the last component and the pod (or `docker`) in the one above,
 * so these are enough to tell the container after its cgroup is removed, when the id no
 * longer leads to a path.
 */
struct psc_cgroup {
	__u64 id;
	char leaf[PSC_CGROUP_NAME_LEN];
	char parent[PSC_CGROUP_NAME_LEN];
};

/* Before Linux 6.15 the field was `parent`. */
struct kernfs_node___pre615 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *psc_kernfs_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___pre615 *)kn, parent);
}

/* Fills `out` for the current task. Costs a few reads: call it on rare paths only. */
static __always_inline void psc_current_cgroup(struct psc_cgroup *out)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct kernfs_node *kn = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn);
	struct kernfs_node *parent;

	out->id = bpf_get_current_cgroup_id();
	if (!kn)
		return;
	bpf_probe_read_kernel_str(out->leaf, sizeof(out->leaf), BPF_CORE_READ(kn, name));
	parent = psc_kernfs_parent(kn);
	if (parent)
		bpf_probe_read_kernel_str(out->parent, sizeof(out->parent),
					  BPF_CORE_READ(parent, name));
}

struct psc_process {
	char comm[PSC_COMM_LEN];
	struct psc_cgroup cgroup;
};

/* The current process: its group leader's name (threads may rename themselves) and
 * its cgroup. For rare paths only: first sight of a process, exec, connect. */
static __always_inline void psc_current_process(struct psc_process *out)
{
	struct task_struct *task = bpf_get_current_task_btf();

	bpf_probe_read_kernel_str(out->comm, sizeof(out->comm), task->group_leader->comm);
	psc_current_cgroup(&out->cgroup);
}

/*
 * A process is known by its tgid and its generation: its start time since boot in
 * units of 2^PSC_GENERATION_SHIFT ns (about 16.8 ms), modulo 2^16. A pid reused by a new
 * process thus keys series of its own, which never add to, or take the labels of, the
 * old process's. A shift, not a division by the 10 ms clock tick: user space matches it
 * against the start tick in /proc/PID/stat.
 */
enum psc_process_layout {
	PSC_GENERATION_SHIFT = 24,
};

struct psc_process_key {
	__u32 tgid;
	__u16 gen;
	__u16 pad;
};

static __always_inline __u16 psc_generation(struct task_struct *task)
{
	return (__u16)(task->group_leader->start_boottime >> PSC_GENERATION_SHIFT);
}
