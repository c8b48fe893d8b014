/*
 * Empty programs on tp_btf/sys_enter and tp_btf/sys_exit (the cost any syscall-wide
 * tracer pays before doing any work) and on the socket hooks of the http probe.
 * `periscope floor` attaches one set so users (and BENCHMARKS.md) can compare
 * Periscope's cost with this floor on their own kernel.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "periscope.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

SEC("tp_btf/sys_enter")
int BPF_PROG(psc_floor_enter)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(psc_floor_exit)
{
	return 0;
}

/* The socket hooks of the http probe: the floor any tracer that sees socket bytes pays. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(psc_floor_recv)
{
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(psc_floor_send)
{
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(psc_floor_state)
{
	return 0;
}
