/*
 * syscalls: per process and syscall, a count, errors by errno and, for the
 * syscalls chosen for latency, a latency histogram by native bucket.
 *
 * Costs decide the shape (see BENCHMARKS.md): every syscall is counted from one
 * hook on sys_exit, which sees the syscall number and the return value. Only
 * syscalls chosen for latency also pay for a start stamp, taken by per-syscall
 * tracepoints (syscalls/sys_enter_<name>), which do not run for other syscalls;
 * when tracefs cannot be mounted, a tp_btf program on sys_enter with an early
 * return takes its place. The stamp lives in task storage, much cheaper than a
 * hash keyed by thread id.
 *
 * The series agree with each other: a call, its error and its latency go together to
 * the process's series, or together to its tenant's overflow series when one of them
 * finds no place there (count_slow). So no series has more errors than calls, and a
 * histogram counts as many calls as its counter wherever every call was timed.
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
 * Overflow series: where a call goes, with its error and latency, when its process finds
 * one of the maps it needs, or its tenant's share of it, full, so totals stay exact. One per tenant slot (bpf/tenants.h): the arrays
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

static __always_inline void record_comm(__u32 tgid, __u16 gen)
{
	struct psc_process_key key = { .tgid = tgid, .gen = gen };
	struct psc_process process = {};

	psc_current_process(&process);
	bpf_map_update_elem(&comms, &key, &process, BPF_ANY);
}

/*
 * The count of the pair in this CPU's table; NULL when its probe sequence is full. A
 * free slot is claimed with a count of 0: the caller adds the call only once it knows
 * the call's error and latency have a place beside it.
 */
static __always_inline __u64 *count_fast(__u32 tgid, __u16 gen, __u32 nr)
{
	__u32 base = bpf_get_smp_processor_id() * (fast_slots_mask + 1);
	__u32 hash = (tgid * 2654435761u) ^ (nr * 2246822519u);
	struct psc_fast_slot *slot;
	__u32 idx;

	for (int probe = 0; probe < PSC_FAST_PROBES; probe++) {
		idx = base + ((hash + probe) & fast_slots_mask);
		slot = bpf_map_lookup_elem(&fast_counts, &idx);
		if (!slot)
			return NULL;
		if (slot->nr_plus_one == nr + 1 && slot->tgid == tgid && slot->gen == gen)
			return &slot->count;
		if (slot->nr_plus_one == 0) {
			/*
			 * Claim: user space reads a slot as taken once nr_plus_one is set, so it
			 * is written last. x86 keeps stores in order; the compiler must too.
			 */
			slot->tgid = tgid;
			slot->gen = gen;
			slot->count = 0;
			asm volatile("" ::: "memory");
			slot->nr_plus_one = nr + 1;
			record_comm(tgid, gen);
			return &slot->count;
		}
	}
	return NULL;
}

/*
 * A new entry of `key` in `map`, holding `initial`, within the tenant's share of the
 * map; NULL when the share or the map is full (counted in tenant_folded or in
 * folded[folded_slot]). Another CPU may create the key first: its entry is returned.
 */
static __always_inline void *new_entry(void *map, const void *key, const void *initial,
				       __u32 tenant, __u32 share, __u32 folded_slot)
{
	void *value;

	if (!psc_tenant_reserve(tenant, share))
		return NULL;
	if (bpf_map_update_elem(map, key, initial, BPF_NOEXIST))
		psc_tenant_release(tenant, share);
	value = bpf_map_lookup_elem(map, key);
	if (!value)
		PSC_COUNT_IN(folded, folded_slot);
	return value;
}

/* The syscall's latency, when it was stamped at entry: the stamp is used up. */
static __always_inline int take_latency(struct task_struct *task, __u32 nr, __u64 *delta)
{
	struct psc_syscall_start *st = bpf_task_storage_get(&start, task, 0, 0);

	if (!st || !st->ts || st->nr != nr)
		return 0;
	*delta = bpf_ktime_get_ns() - st->ts;
	st->ts = 0;
	return 1;
}

/*
 * A call, its error (err != 0) and its latency (timed != 0) when the process's series
 * have no place for one of them: all of it goes to the tenant's overflow series, so
 * that there too no series has more errors than calls, nor a histogram another count.
 */
static __always_inline void count_overflow(__u32 tenant, __u32 nr, __u32 err, __u32 timed,
					   __u64 delta)
{
	struct psc_syscall_nr_err error_key = { .nr = nr, .tenant = tenant, .err = err };
	__u32 slot = tenant * PSC_MAX_SYSCALLS + nr;
	struct psc_hist *hist;
	__u64 zero = 0, *value;

	value = bpf_map_lookup_elem(&overflow_counts, &slot);
	if (value)
		*value += 1;
	if (err) {
		value = psc_lookup_or_insert(&overflow_errors, &error_key, &zero);
		if (!value) {
			/* Even this map is full: the error stays, its errno is lost. */
			PSC_COUNT_IN(folded, PSC_FOLDED_OVERFLOW_ERRORS);
			value = bpf_map_lookup_elem(&overflow_errors_any, &slot);
		}
		if (value)
			*value += 1;
	}
	if (timed) {
		slot = tenant * timed_count + timed - 1;
		hist = bpf_map_lookup_elem(&overflow_latency, &slot);
		if (hist)
			psc_hist_record_atomic(hist, delta);
	}
}

/*
 * Everything of a call but the common case (a success, not timed, counted in this CPU's
 * table): `count` is its place in that table, if it found one. The call, its error and
 * its latency go together to the process's series when each has a place there, existing
 * or new; else together to the overflow series. Places taken for a call that then goes
 * to the overflow stay, empty, for the process's next calls.
 */
static __always_inline void count_slow(struct task_struct *task, __u32 tgid, __u16 gen,
				       __u32 nr, __u64 *count, __u32 err, __u32 timed)
{
	struct psc_syscall_key key = { .tgid = tgid, .nr = nr, .gen = gen };
	struct psc_syscall_error_key error_key = {
		.tgid = tgid, .nr = nr, .gen = gen, .err = err
	};
	struct psc_hist *hist = NULL, *zeroes;
	__u64 zero = 0, delta = 0, *error = NULL;
	__u32 zero_idx = 0;

	if (timed && !take_latency(task, nr, &delta))
		timed = 0;
	if (!count) {
		count = bpf_map_lookup_elem(&counts, &key);
		if (!count) {
			count = new_entry(&counts, &key, &zero, psc_tenant_slot(task),
					  PSC_SHARE_COUNTS, PSC_FOLDED_COUNTS);
			if (!count)
				goto overflow;
			record_comm(tgid, gen);
		}
	}
	if (err) {
		error = bpf_map_lookup_elem(&errors, &error_key);
		if (!error) {
			error = new_entry(&errors, &error_key, &zero, psc_tenant_slot(task),
					  PSC_SHARE_ERRORS, PSC_FOLDED_ERRORS);
			if (!error)
				goto overflow;
		}
	}
	if (timed) {
		hist = bpf_map_lookup_elem(&latency, &key);
		if (!hist) {
			zeroes = bpf_map_lookup_elem(&zero_hist, &zero_idx);
			if (zeroes)
				hist = new_entry(&latency, &key, zeroes, psc_tenant_slot(task),
						 PSC_SHARE_LATENCY, PSC_FOLDED_LATENCY);
			if (!hist)
				goto overflow;
		}
	}
	/* The call first (user space reads errors and latency before counts), and the
	 * compiler keeps it first. */
	*count += 1;
	asm volatile("" ::: "memory");
	if (error)
		*error += 1;
	if (hist)
		psc_hist_record_atomic(hist, delta);
	return;
overflow:
	count_overflow(psc_tenant_slot(task), nr, err, timed, delta);
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
	long nr = regs->orig_ax;
	__u32 timed, err;
	__u64 *count;
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
	err = ret < 0 && ret >= -PSC_MAX_ERRNO ? -ret : 0;
	timed = latency_index[nr];
	count = count_fast(tgid, gen, nr);
	if (count && !err && !timed)
		*count += 1;
	else
		count_slow(task, tgid, gen, nr, count, err, timed);
	if ((nr == PSC_NR_EXECVE || nr == PSC_NR_EXECVEAT) && ret == 0)
		record_comm(tgid, gen);
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

/* Stamps the start of syscall `nr` (in range) when its process and cgroup are traced. */
static __always_inline int stamp_if_traced(long nr)
{
	if (filter_cgroups && psc_cgroup_skipped(bpf_get_current_task_btf()))
		return 0;
	if (!is_selected(bpf_get_current_pid_tgid() >> 32))
		return 0;
	stamp_start(nr);
	return 0;
}

/* Attached by user space to syscalls/sys_enter_<name> for each syscall chosen for latency. */
SEC("tracepoint")
int psc_sys_enter_tp(struct psc_sys_enter_record *ctx)
{
	long nr = ctx->nr;

	if (nr < 0 || nr >= PSC_MAX_SYSCALLS)
		return 0;
	return stamp_if_traced(nr);
}

/* Fallback when tracefs is unavailable: runs on every syscall, returns early for most. */
SEC("tp_btf/sys_enter")
int BPF_PROG(psc_sys_enter_btf, struct pt_regs *regs, long id)
{
	if (id < 0 || id >= PSC_MAX_SYSCALLS || !latency_index[id])
		return 0;
	return stamp_if_traced(id);
}
