/*
 * process: execs, exits by exit code class, and OOM kills, per executable
 * name (the task's comm after exec, at most 15 bytes). Counted in the kernel,
 * in a per-CPU hash capped by configuration; executables beyond the cap fold
 * into one overflow slot so totals stay exact.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "periscope.h"
#include "process.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

PSC_EXPORT_TYPES(struct psc_exe_key, struct psc_process_stats);

PSC_PERCPU_HASH(executables, struct psc_exe_key, struct psc_process_stats, 4096);

PSC_PERCPU_ARRAY(overflow, struct psc_process_stats, 1);

PSC_PERCPU_ARRAY(folded, __u64, 1);

static __always_inline struct psc_process_stats *stats_for(struct psc_exe_key *key)
{
	struct psc_process_stats zero = {}, *stats;
	__u32 slot = 0;

	stats = psc_lookup_or_insert(&executables, key, &zero);
	if (stats)
		return stats;
	PSC_COUNT_IN(folded, 0);
	return bpf_map_lookup_elem(&overflow, &slot);
}

/* The stats of the process `task` belongs to. */
static __always_inline struct psc_process_stats *leader_stats(struct task_struct *task)
{
	struct psc_exe_key key = {};

	/* A thread may rename itself; the process is known by its group leader's name. */
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	return stats_for(&key);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(psc_process_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct psc_exe_key key = {};
	struct psc_process_stats *stats;

	bpf_get_current_comm(key.comm, sizeof(key.comm));
	stats = stats_for(&key);
	if (stats)
		stats->execs += 1;
	return 0;
}

/* Fires once per thread; group_dead marks the last thread, i.e. the process's exit. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(psc_process_exit, struct task_struct *task, bool group_dead)
{
	struct psc_process_stats *stats;
	int code;

	if (!group_dead)
		return 0;
	stats = leader_stats(task);
	if (!stats)
		return 0;
	code = task->exit_code;
	if (code & 0x7f)
		stats->exits_signal += 1;
	else if ((code >> 8) & 0xff)
		stats->exits_error += 1;
	else
		stats->exits_ok += 1;
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(psc_oom_victim, struct task_struct *task, uid_t uid)
{
	struct psc_process_stats *stats = leader_stats(task);

	if (stats)
		stats->oom_kills += 1;
	return 0;
}
