/*
 * syscalls: per process and syscall, a count, errors by errno and, for the
 * syscalls chosen for latency, a log-linear latency histogram.
 *
 * Costs decide the shape (see BENCHMARKS.md): every syscall is counted from one
 * hook on sys_exit, which sees the syscall number and the return value. Only
 * syscalls chosen for latency also pay for a start stamp, taken by per-syscall
 * tracepoints (syscalls/sys_enter_<name>), which do not run for other syscalls;
 * when tracefs cannot be mounted, a tp_btf program on sys_enter with an early
 * return takes its place. The stamp lives in task storage, much cheaper than a
 * hash keyed by thread id.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "periscope.h"
#include "syscalls.h"
#include "tenants.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

/* Set by user space before load. For each syscall chosen for latency, its place among
 * them plus one (0: not timed); timed_count of them are. */
const volatile __u16 latency_index[PSC_MAX_SYSCALLS] = {};
const volatile __u32 timed_count = 0;
/* Slots per CPU in fast_counts, less one: a power of two minus one. */
const volatile __u32 fast_slots_mask = 0;
const volatile __u8 filter_by_tgid = 0;
const volatile __u8 filter_by_comm = 0;

PSC_EXPORT_TYPES(struct psc_syscall_key, struct psc_syscall_error_key,
		 struct psc_syscall_nr_err, struct psc_hist, struct psc_process,
		 struct psc_process_key, struct psc_fast_slot, enum psc_syscall_share,
		 enum psc_syscall_folded_slot);

/* Slots a pair may take in its CPU's table; beyond, it is counted in `counts`. */
#define PSC_FAST_PROBES 4

#define PSC_NR_CLONE 56
#define PSC_NR_FORK 57
#define PSC_NR_VFORK 58
#define PSC_NR_EXECVE 59
#define PSC_NR_EXECVEAT 322
#define PSC_NR_CLONE3 435
/* ERESTARTSYS .. ERESTART_RESTARTBLOCK: kernel-internal results of an interrupted call. */
#define PSC_ERESTART_FIRST 512
#define PSC_ERESTART_LAST 516

/*
 * The first level of the counts: per CPU, a table of slots addressed by a hash of
 * (tgid, nr), probed linearly. A plain, memory-mappable array rather than a hash map:
 * an array lookup is inlined by the verifier, where a hash map lookup cost about 50 ns
 * per syscall on our machines (BENCHMARKS.md). Each CPU writes only its own table, and
 * user space reads them all through a shared mapping, without a syscall. Sized by user
 * space: possible CPUs x slots per CPU.
 */
PSC_MAP_FLAGS(BPF_MAP_TYPE_ARRAY, BPF_F_MMAPABLE, fast_counts, __u32, struct psc_fast_slot, 1);

/* max_entries of the keyed maps are the configured caps, set by user space. */
PSC_PERCPU_HASH(counts, struct psc_syscall_key, __u64, 16384);

PSC_PERCPU_HASH(errors, struct psc_syscall_error_key, __u64, 4096);

/* Shared, not per-CPU: a histogram per CPU would cost 1.2 KiB times the CPU count per series. */
PSC_HASH(latency, struct psc_syscall_key, struct psc_hist, 4096);

/*
 * Overflow series: where data goes when its process finds a map, or its tenant's share
 * of it, full, so totals stay exact. One per tenant slot (bpf/tenants.h): the arrays
 * hold tenant_slots x PSC_MAX_SYSCALLS entries (set by user space), at
 * slot * PSC_MAX_SYSCALLS + nr.
 */
PSC_PERCPU_ARRAY(overflow_counts, __u64, PSC_MAX_SYSCALLS);

PSC_PERCPU_HASH(overflow_errors, struct psc_syscall_nr_err, __u64, 4096);

/* Last resort when even overflow_errors is full: errors by syscall, errno unknown. */
PSC_PERCPU_ARRAY(overflow_errors_any, __u64, PSC_MAX_SYSCALLS);

/* tenant_slots x timed_count histograms (set by user space), at
 * slot * timed_count + latency_index[nr] - 1. */
PSC_ARRAY(overflow_latency, struct psc_hist, 1);

PSC_PERCPU_ARRAY(folded, __u64, PSC_FOLDED_SLOTS);

/* Always zero: the source of new histogram entries, too large for the BPF stack. */
PSC_PERCPU_ARRAY(zero_hist, struct psc_hist, 1);

PSC_TASK_STORAGE(start, struct psc_syscall_start);

/*
 * Names and cgroups of the processes counted, recorded when a process gets its first
 * series and again when it execs (a runtime execs a container's process once it is in
 * the container's cgroup), so processes that exit before user space reads /proc keep
 * their name and container. LRU: the oldest go first; user space falls back to
 * "unknown" and no container.
 */
PSC_LRU_HASH(comms, struct psc_process_key, struct psc_process, 16384);

/* Process selection, consulted only when the matching filter_by_* flag is set. */
PSC_HASH(selected_tgids, __u32, __u8, 1024);

PSC_HASH(selected_comms, char[PSC_COMM_LEN], __u8, 1024);

static __always_inline int is_selected(__u32 tgid)
{
	char comm[PSC_COMM_LEN] = {};

	if (!filter_by_tgid && !filter_by_comm)
		return 1;
	if (filter_by_tgid && bpf_map_lookup_elem(&selected_tgids, &tgid))
		return 1;
	if (filter_by_comm) {
		/* The process's name is its group leader's: threads may rename themselves. */
		struct task_struct *task = bpf_get_current_task_btf();

		bpf_probe_read_kernel_str(comm, sizeof(comm), task->group_leader->comm);
		if (bpf_map_lookup_elem(&selected_comms, comm))
			return 1;
	}
	return 0;
}

/* Adds one to `key` in `map`; to `on_full` when the map is full. 1 when it created the key. */
static __always_inline int add_percpu(void *map, const void *key, __u64 *on_full, __u32 folded_slot)
{
	__u64 one = 1, *value;
	long err;

	value = bpf_map_lookup_elem(map, key);
	if (value) {
		*value += 1;
		return 0;
	}
	err = bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
	if (err == 0)
		return 1;
	if (err == -PSC_EEXIST) {
		/* Another CPU inserted the key first: our slot of it is still ours alone. */
		value = bpf_map_lookup_elem(map, key);
		if (value)
			*value += 1;
		return 0;
	}
	if (on_full)
		*on_full += 1;
	PSC_COUNT_IN(folded, folded_slot);
	return 0;
}

/* The count of `key`, which is not in `counts` yet: a new key if the tenant's share
 * allows, else the tenant's overflow series. */
static __always_inline void count_new(const struct psc_syscall_key *key, __u32 tenant)
{
	__u32 overflow_slot = tenant * PSC_MAX_SYSCALLS + key->nr;
	__u64 *overflow = bpf_map_lookup_elem(&overflow_counts, &overflow_slot);

	if (!psc_tenant_reserve(tenant, PSC_SHARE_COUNTS)) {
		if (overflow)
			*overflow += 1;
		return;
	}
	if (!add_percpu(&counts, key, overflow, PSC_FOLDED_COUNTS))
		psc_tenant_release(tenant, PSC_SHARE_COUNTS);
}

static __always_inline void record_comm(__u32 tgid, __u16 gen)
{
	struct psc_process_key key = { .tgid = tgid, .gen = gen };
	struct psc_process process = {};

	psc_current_process(&process);
	bpf_map_update_elem(&comms, &key, &process, BPF_ANY);
}

/* Counts in this CPU's table; 0 when the pair's probe sequence is full. */
static __always_inline int count_fast(__u32 tgid, __u16 gen, __u32 nr)
{
	__u32 base = bpf_get_smp_processor_id() * (fast_slots_mask + 1);
	__u32 hash = (tgid * 2654435761u) ^ (nr * 2246822519u);
	struct psc_fast_slot *slot;
	__u32 idx;

	for (int probe = 0; probe < PSC_FAST_PROBES; probe++) {
		idx = base + ((hash + probe) & fast_slots_mask);
		slot = bpf_map_lookup_elem(&fast_counts, &idx);
		if (!slot)
			return 0;
		if (slot->nr_plus_one == nr + 1 && slot->tgid == tgid && slot->gen == gen) {
			slot->count += 1;
			return 1;
		}
		if (slot->nr_plus_one == 0) {
			/*
			 * Claim: user space reads a slot as taken once nr_plus_one is set, so it
			 * is written last. x86 keeps stores in order; the compiler must too.
			 */
			slot->tgid = tgid;
			slot->gen = gen;
			slot->count = 1;
			asm volatile("" ::: "memory");
			slot->nr_plus_one = nr + 1;
			record_comm(tgid, gen);
			return 1;
		}
	}
	return 0;
}

static __always_inline void count_error(struct task_struct *task, __u32 tgid, __u16 gen,
					__u32 nr, __u32 err)
{
	struct psc_syscall_error_key key = { .tgid = tgid, .nr = nr, .gen = gen, .err = err };
	struct psc_syscall_nr_err overflow_key = { .nr = nr, .err = err };
	__u64 one = 1, *value;
	__u32 tenant, any_slot;
	long ret;

	value = bpf_map_lookup_elem(&errors, &key);
	if (value) {
		*value += 1;
		return;
	}
	tenant = psc_tenant_slot(task);
	if (psc_tenant_reserve(tenant, PSC_SHARE_ERRORS)) {
		ret = bpf_map_update_elem(&errors, &key, &one, BPF_NOEXIST);
		if (ret == 0)
			return;
		psc_tenant_release(tenant, PSC_SHARE_ERRORS);
		if (ret == -PSC_EEXIST) {
			value = bpf_map_lookup_elem(&errors, &key);
			if (value)
				*value += 1;
			return;
		}
		PSC_COUNT_IN(folded, PSC_FOLDED_ERRORS);
	}
	overflow_key.tenant = tenant;
	any_slot = tenant * PSC_MAX_SYSCALLS + nr;
	add_percpu(&overflow_errors, &overflow_key,
		   bpf_map_lookup_elem(&overflow_errors_any, &any_slot), PSC_FOLDED_OVERFLOW_ERRORS);
}

static __always_inline void record_latency(struct task_struct *task, __u32 tgid, __u16 gen,
					   __u32 nr, __u32 timed)
{
	struct psc_syscall_key key = { .tgid = tgid, .nr = nr, .gen = gen };
	struct psc_syscall_start *st;
	struct psc_hist *hist;
	__u32 zero = 0, tenant, overflow_slot;
	__u64 delta;

	st = bpf_task_storage_get(&start, task, 0, 0);
	if (!st || !st->ts || st->nr != nr)
		return;
	delta = bpf_ktime_get_ns() - st->ts;
	st->ts = 0;

	hist = bpf_map_lookup_elem(&latency, &key);
	if (!hist) {
		struct psc_hist *zeroes = bpf_map_lookup_elem(&zero_hist, &zero);

		if (!zeroes)
			return;
		tenant = psc_tenant_slot(task);
		if (psc_tenant_reserve(tenant, PSC_SHARE_LATENCY)) {
			/* Failure is fine here: either another CPU inserted it, or the map is full. */
			if (bpf_map_update_elem(&latency, &key, zeroes, BPF_NOEXIST))
				psc_tenant_release(tenant, PSC_SHARE_LATENCY);
			hist = bpf_map_lookup_elem(&latency, &key);
			if (!hist)
				PSC_COUNT_IN(folded, PSC_FOLDED_LATENCY);
		}
		if (!hist) {
			overflow_slot = tenant * timed_count + timed - 1;
			hist = bpf_map_lookup_elem(&overflow_latency, &overflow_slot);
			if (!hist)
				return;
		}
	}
	psc_hist_record_atomic(hist, delta);
}

static __always_inline void stamp_start(__u32 nr)
{
	struct psc_syscall_start *st;

	st = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		PSC_COUNT_IN(folded, PSC_FOLDED_START);
		return;
	}
	st->nr = nr;
	st->ts = bpf_ktime_get_ns();
}

SEC("tp_btf/sys_exit")
int BPF_PROG(psc_sys_exit, struct pt_regs *regs, long ret)
{
	/* One helper call gives both the tgid and the generation. */
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	struct psc_syscall_key key = {};
	long nr = regs->orig_ax;
	__u64 *count;
	__u32 timed;
	__u16 gen;

	if (filter_cgroups && psc_cgroup_skipped(task))
		return 0;
	if (nr < 0 || nr >= PSC_MAX_SYSCALLS)
		return 0;
	/* A new task's first return to user space passes here too, with its parent's
	 * fork or clone and 0: only the parent's return is the call. */
	if (ret == 0 && (nr == PSC_NR_CLONE || nr == PSC_NR_FORK || nr == PSC_NR_VFORK ||
			 nr == PSC_NR_CLONE3))
		return 0;
	/* An interrupted call is restarted (or fails with EINTR once the signal is
	 * handled): it is counted when it completes, not at each attempt. */
	if (ret <= -PSC_ERESTART_FIRST && ret >= -PSC_ERESTART_LAST)
		return 0;
	if (!is_selected(tgid))
		return 0;

	gen = psc_generation(task);
	key.tgid = tgid;
	key.nr = nr;
	key.gen = gen;
	if (!count_fast(tgid, gen, nr)) {
		count = bpf_map_lookup_elem(&counts, &key);
		if (count) {
			*count += 1;
		} else {
			record_comm(tgid, gen);
			count_new(&key, psc_tenant_slot(task));
		}
	}
	if ((nr == PSC_NR_EXECVE || nr == PSC_NR_EXECVEAT) && ret == 0)
		record_comm(tgid, gen);
	if (ret < 0 && ret >= -PSC_MAX_ERRNO)
		count_error(task, tgid, gen, nr, -ret);
	timed = latency_index[nr];
	if (timed)
		record_latency(task, tgid, gen, nr, timed);
	return 0;
}

/*
 * The record of syscalls/sys_enter_<name>: after the 8-byte common header comes a 4-byte
 * syscall number (see its tracefs `format`); trace_event_raw_sys_enter's `long id`
 * would read 4 bytes of padding with it.
 */
struct psc_sys_enter_record {
	__u64 common;
	int nr;
};

/* Attached by user space to syscalls/sys_enter_<name> for each syscall chosen for latency. */
SEC("tracepoint")
int psc_sys_enter_tp(struct psc_sys_enter_record *ctx)
{
	long nr = ctx->nr;

	if (nr < 0 || nr >= PSC_MAX_SYSCALLS)
		return 0;
	if (filter_cgroups && psc_cgroup_skipped(bpf_get_current_task_btf()))
		return 0;
	if (!is_selected(bpf_get_current_pid_tgid() >> 32))
		return 0;
	stamp_start(nr);
	return 0;
}

/* Fallback when tracefs is unavailable: runs on every syscall, returns early for most. */
SEC("tp_btf/sys_enter")
int BPF_PROG(psc_sys_enter_btf, struct pt_regs *regs, long id)
{
	if (id < 0 || id >= PSC_MAX_SYSCALLS || !latency_index[id])
		return 0;
	if (filter_cgroups && psc_cgroup_skipped(bpf_get_current_task_btf()))
		return 0;
	if (!is_selected(bpf_get_current_pid_tgid() >> 32))
		return 0;
	stamp_start(id);
	return 0;
}
