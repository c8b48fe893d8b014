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
