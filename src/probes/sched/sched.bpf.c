/*
 * sched: run-queue latency, the time a task waits runnable before a CPU runs it, per
 * executable and cgroup, in the kernel's histogram by native bucket.
 *
 * A task is stamped when it becomes runnable: woken (sched_wakeup, sched_wakeup_new) or
 * switched out while still runnable (preempted). When sched_switch runs it, the wait
 * since the stamp is recorded and the stamp cleared. Stamps live in task storage, which
 * the kernel frees with the task: no table to size, nothing to expire.
 *
 * Every wakeup and every switch pays here, so the hot path is one task-storage lookup
 * per event and, per wait recorded, one hash lookup and two atomic adds. Times come from
 * bpf_ktime_get_ns. The run queue's own clock would be cheaper to read, but the
 * scheduler skips updating it when a wakeup preempts the running task, and such waits
 * would then read as 0. Kernel threads are left out: their names carry ids (kworker/3:1), and users tune their
 * processes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "periscope.h"
#include "histogram.h"
#include "sched.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

PSC_EXPORT_TYPES(struct psc_sched_key, enum psc_sched_counter);

#define PF_KTHREAD 0x00200000
#define TASK_RUNNING 0

PSC_TASK_STORAGE(queued_at, __u64);

/* Shared, not per-CPU: a histogram is 1.2 KB, and per-CPU copies of every series would
 * cost that times the CPU count. Updates are atomic. */
PSC_HASH(latency, struct psc_sched_key, struct psc_hist, 1024);

PSC_ARRAY(overflow, struct psc_hist, 1);

PSC_PERCPU_ARRAY(counters, __u64, PSC_SCHED_COUNTERS);

static __always_inline void stamp(struct task_struct *task, __u64 now)
{
	__u64 *at;

	if (task->flags & PF_KTHREAD)
		return;
	at = bpf_task_storage_get(&queued_at, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (at)
		*at = now;
	else
		PSC_COUNT_IN(counters, PSC_SCHED_UNSTAMPED);
}

/* The value a new series starts from: too large for the BPF stack. Never written. */
struct psc_hist empty_hist = {};

static __always_inline struct psc_hist *series_of(struct task_struct *task)
{
	struct psc_sched_key key = {};
	struct psc_hist *hist;
	__u32 zero = 0;

	/* A thread may rename itself; the process is known by its group leader's name. */
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	key.cgroup = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	hist = psc_lookup_or_insert(&latency, &key, &empty_hist);
	if (hist)
		return hist;
	PSC_COUNT_IN(counters, PSC_SCHED_FOLDED);
	return bpf_map_lookup_elem(&overflow, &zero);
}

/* Before Linux 5.14 the field was `state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline bool still_runnable(struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return BPF_CORE_READ(task, __state) == TASK_RUNNING;
	return BPF_CORE_READ((struct task_struct___pre514 *)task, state) == TASK_RUNNING;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(psc_sched_wakeup, struct task_struct *task)
{
	stamp(task, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(psc_sched_wakeup_new, struct task_struct *task)
{
	stamp(task, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(psc_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = bpf_ktime_get_ns(), *at, since;
	struct psc_hist *hist;

	/* Preempted (even on its way to sleep) or still runnable, it stays on the run
	 * queue: it waits there from now. */
	if (preempt || still_runnable(prev))
		stamp(prev, now);
	if (next->flags & PF_KTHREAD)
		return 0;
	at = bpf_task_storage_get(&queued_at, next, 0, 0);
	if (!at || !*at)
		return 0;
	since = *at;
	*at = 0;
	hist = series_of(next);
	if (hist)
		psc_hist_record_atomic(hist, now > since ? now - since : 0);
	return 0;
}
