/*
 * Empty programs on tp_btf/sys_enter and tp_btf/sys_exit (the cost any syscall-wide
 * tracer pays before doing any work), on the socket hooks of the http probe and on the
 * scheduler hooks of the sched probe, and programs on those socket hooks that only copy
 * socket bytes (below).
 * `periscope floor` attaches one set so users (and BENCHMARKS.md) can compare
 * Periscope's cost with this floor on their own kernel.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "periscope.h"
#include "noop.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

PSC_NOOP(BPF_PROG, psc_floor_enter, "tp_btf/sys_enter")
PSC_NOOP(BPF_PROG, psc_floor_exit, "tp_btf/sys_exit")

/* The socket hooks of the http probe: the floor any tracer that sees socket bytes pays. */
PSC_NOOP(BPF_PROG, psc_floor_recv, "tp_btf/sock_recv_length")
PSC_NOOP(BPF_PROG, psc_floor_send, "tp_btf/sock_send_length")
PSC_NOOP(BPF_PROG, psc_floor_state, "tp_btf/inet_sock_set_state")
PSC_NOOP(BPF_PROG, psc_floor_skb_copy, "tp_btf/skb_copy_datagram_iovec")

/*
 * The least any tracer of plaintext HTTP pays on these hooks without kprobes: find the
 * syscall's buffer in the saved registers and copy the first bytes of every TCP read
 * and write, the way the http probe does, then throw them away. Nothing is tracked,
 * parsed or sent to user space.
 */
#define FLOOR_COPY 256
#define FLOOR_NR_READ 0
#define FLOOR_NR_WRITE 1
#define FLOOR_NR_READV 19
#define FLOOR_NR_WRITEV 20
#define FLOOR_NR_SENDTO 44
#define FLOOR_NR_RECVFROM 45

PSC_PERCPU_ARRAY(floor_bytes, char[FLOOR_COPY], 1);

static __always_inline int floor_copy(struct sock *sk, int ret)
{
	struct task_struct *task;
	struct pt_regs *regs;
	struct iovec seg = {};
	void *buf;
	__u32 zero = 0, want;
	char *bytes;

	if (ret <= 0 || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & 0x00200000) /* PF_KTHREAD */
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	bytes = bpf_map_lookup_elem(&floor_bytes, &zero);
	if (!regs || !bytes)
		return 0;
	switch (regs->orig_ax) {
	case FLOOR_NR_READ: case FLOOR_NR_WRITE: case FLOOR_NR_RECVFROM: case FLOOR_NR_SENDTO:
		buf = (void *)regs->si;
		break;
	case FLOOR_NR_READV: case FLOOR_NR_WRITEV:
		if (bpf_probe_read_user(&seg, sizeof(seg), (void *)regs->si))
			return 0;
		buf = seg.iov_base;
		if (ret > seg.iov_len)
			ret = seg.iov_len;
		break;
	default:
		return 0;
	}
	want = (__u32)ret > FLOOR_COPY ? FLOOR_COPY : (__u32)ret;
	asm volatile("%0 &= 0x1ff" : "+r"(want));
	if (want > FLOOR_COPY)
		return 0;
	bpf_probe_read_user(bytes, want, buf);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(psc_floor_recv_copy, struct sock *sk, int ret, int flags)
{
	return floor_copy(sk, ret);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(psc_floor_send_copy, struct sock *sk, int ret, int flags)
{
	return floor_copy(sk, ret);
}

/* The sched probe's hooks: the floor any run-queue latency tracer pays. */
PSC_NOOP(BPF_PROG, psc_floor_wakeup, "tp_btf/sched_wakeup")
PSC_NOOP(BPF_PROG, psc_floor_wakeup_new, "tp_btf/sched_wakeup_new")
PSC_NOOP(BPF_PROG, psc_floor_switch, "tp_btf/sched_switch")
