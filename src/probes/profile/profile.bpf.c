/*
 * profile: CPU samples of every process, with their kernel and user stacks, counted in
 * the kernel.
 *
 * A software CPU-clock perf event per CPU runs psc_profile_sample at the configured
 * frequency. Each sample's two stacks go into a stack map, which keeps each distinct
 * stack once and names it by an id, and the sample is counted in a per-CPU hash keyed by
 * (process, user stack id, kernel stack id): a process spinning in one loop costs one
 * entry, however many samples it takes. User space reads both maps and symbolizes; for
 * continuous profiling there are two pairs of them, written in turn.
 *
 * User stacks are walked by frame pointers (the kernel's perf callchain), so a binary
 * built without them gives a short stack; user space counts those.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "periscope.h"
#include "profile.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

PSC_EXPORT_TYPES(struct psc_profile_key, enum psc_profile_counter);

/* Only this process when set (the command line's --pid), else every one. */
const volatile __u32 target_tgid = 0;

/* Only processes of this cgroup v2 when set (the command line's --container). */
const volatile __u64 target_cgroup = 0;

/* Which pair of maps samples go to: user space flips it, then reads and empties the
 * other pair, so that what it reads is no longer written and no stack id it reads is
 * ever reused under it. */
volatile __u32 buffer = 0;

/* Sizes set by user space. */
#define PSC_STACK_MAP(name)						\
	struct {							\
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);			\
		__uint(max_entries, 16384);				\
		__uint(key_size, sizeof(__u32));			\
		__uint(value_size, PSC_PROFILE_MAX_FRAMES * sizeof(__u64)); \
	} name SEC(".maps")

PSC_STACK_MAP(stacks_0);
PSC_STACK_MAP(stacks_1);
PSC_PERCPU_HASH(counts_0, struct psc_profile_key, __u64, 16384);
PSC_PERCPU_HASH(counts_1, struct psc_profile_key, __u64, 16384);

PSC_PERCPU_ARRAY(counters, __u64, PSC_PROFILE_COUNTERS);

/* A stack's id, or a negative value: -EFAULT and the like when there is no such stack,
 * PSC_PROFILE_STACK_LOST when the map had no room for it. */
static __always_inline __s32 stack_id(struct bpf_perf_event_data *ctx, void *stacks, __u64 flags)
{
	long id = bpf_get_stackid(ctx, stacks, flags);

	if (id == -PSC_EEXIST) {
		PSC_COUNT_IN(counters, PSC_PROFILE_COLLISIONS);
		return PSC_PROFILE_STACK_LOST;
	}
	return id;
}

static __always_inline int record(struct bpf_perf_event_data *ctx, __u32 tgid, void *stacks,
				  void *counts)
{
	struct psc_profile_key key = {};
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 *count, zero = 0;

	key.tgid = tgid;
	key.kernel_stack = stack_id(ctx, stacks, 0);
	key.user_stack = stack_id(ctx, stacks, BPF_F_USER_STACK);
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	count = psc_lookup_or_insert(counts, &key, &zero);
	if (count)
		*count += 1; /* this CPU's copy: no other CPU writes it */
	else
		PSC_COUNT_IN(counters, PSC_PROFILE_FOLDED);
	return 0;
}

SEC("perf_event")
int psc_profile_sample(struct bpf_perf_event_data *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (tgid == 0) {
		PSC_COUNT_IN(counters, PSC_PROFILE_IDLE);
		return 0;
	}
	if (target_tgid && tgid != target_tgid)
		return 0;
	if (target_cgroup && bpf_get_current_cgroup_id() != target_cgroup)
		return 0;
	PSC_COUNT_IN(counters, PSC_PROFILE_SAMPLES);
	if (buffer & 1)
		return record(ctx, tgid, &stacks_1, &counts_1);
	return record(ctx, tgid, &stacks_0, &counts_0);
}
