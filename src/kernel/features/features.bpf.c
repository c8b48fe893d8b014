/*
 * One small program per kernel feature Periscope's probes use. `periscope probes
 * --features` loads each alone (and attaches or runs it where that is where kernels
 * refuse): what the kernel says is the answer, never a feature list, which can be wrong.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "periscope.h"
#include "noop.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

/* Weak: a kernel without it refuses only the program that calls it. */
extern int bpf_dynptr_from_skb(struct __sk_buff *skb, __u64 flags,
			       struct bpf_dynptr *ptr__uninit) __ksym __weak;

struct psc_feature_lock {
	struct bpf_spin_lock lock;
	__u64 value;
};

PSC_HASH(locked, __u32, struct psc_feature_lock, 4);

PSC_RINGBUF(ring, 4096);

PSC_TASK_STORAGE(task_store, __u64);

PSC_SK_STORAGE(sock_store, __u64);

PSC_NOOP(BPF_PROG, psc_feat_tp_btf, "tp_btf/sched_switch")
PSC_NOOP_CTX(psc_feat_raw_tp, "raw_tp/sched_switch")
PSC_NOOP_CTX(psc_feat_tracepoint, "tracepoint/sched/sched_switch")
PSC_NOOP(BPF_UPROBE, psc_feat_uprobe, "uprobe")
PSC_NOOP(BPF_KPROBE, psc_feat_kprobe, "kprobe/do_nanosleep")
PSC_NOOP(BPF_PROG, psc_feat_fentry, "fentry/do_nanosleep")

SEC("lsm/file_open")
int BPF_PROG(psc_feat_lsm, struct file *file)
{
	return 0;
}

PSC_NOOP_CTX(psc_feat_perf, "perf_event")

SEC("cgroup_skb/ingress")
int psc_feat_cgroup_skb(struct __sk_buff *skb)
{
	return 1;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(psc_feat_ringbuf)
{
	__u64 *slot = bpf_ringbuf_reserve(&ring, sizeof(*slot), 0);

	if (slot)
		bpf_ringbuf_discard(slot, 0);
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(psc_feat_rb_dynptr)
{
	struct bpf_dynptr record;
	__u64 zero = 0;

	if (!bpf_ringbuf_reserve_dynptr(&ring, sizeof(zero), 0, &record))
		bpf_dynptr_write(&record, 0, &zero, sizeof(zero), 0);
	bpf_ringbuf_discard_dynptr(&record, 0);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(psc_feat_task_st)
{
	bpf_task_storage_get(&task_store, bpf_get_current_task_btf(), 0, 0);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(psc_feat_sock_st, struct sock *sk)
{
	bpf_sk_storage_get(&sock_store, sk, 0, 0);
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(psc_feat_skb_dynptr, const struct sk_buff *skb, int len)
{
	struct bpf_dynptr ptr;
	char head[4];

	if (bpf_dynptr_from_skb((struct __sk_buff *)skb, 0, &ptr))
		return 0;
	bpf_dynptr_read(head, sizeof(head), &ptr, 0, 0);
	return 0;
}

static long count_entry(struct bpf_map *map, __u32 *key, struct psc_feature_lock *value, void *ctx)
{
	bpf_spin_lock(&value->lock);
	value->value++;
	bpf_spin_unlock(&value->lock);
	return 0;
}

SEC("syscall")
int psc_feat_syscall(void *ctx)
{
	bpf_for_each_map_elem(&locked, count_entry, 0, 0);
	return 0;
}

SEC("raw_tp/sched_switch")
int psc_feat_raw_lock(void *ctx)
{
	__u32 key = 0;
	struct psc_feature_lock *value = bpf_map_lookup_elem(&locked, &key);

	if (value) {
		bpf_spin_lock(&value->lock);
		value->value++;
		bpf_spin_unlock(&value->lock);
	}
	return 0;
}

static long loop_step(__u32 index, void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(psc_feat_loop)
{
	bpf_loop(4, loop_step, 0, 0);
	return 0;
}

PSC_NOOP_ITER(psc_feat_it_task, task)
PSC_NOOP_ITER(psc_feat_it_file, task_file)
PSC_NOOP_ITER(psc_feat_it_tcp, tcp)
PSC_NOOP_ITER(psc_feat_it_udp, udp)
PSC_NOOP_ITER(psc_feat_it_unix, unix)
PSC_NOOP_ITER(psc_feat_it_map, bpf_map)
PSC_NOOP_ITER(psc_feat_it_elem, bpf_map_elem)
