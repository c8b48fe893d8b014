/*
 * Programs that do nothing: the benchmark floor attaches them to learn what a hook costs
 * by itself, and the feature checks load them to learn whether the kernel takes a
 * program type. One line each, so that a list of them reads as a table.
 */
#pragma once

/* On a hook whose context `wrapper` (BPF_PROG, BPF_UPROBE, BPF_KPROBE) unpacks. */
#define PSC_NOOP(wrapper, name, sec) \
	SEC(sec) int wrapper(name) { return 0; }

/* On a hook that passes its context as a bare pointer: raw_tp, tracepoint, perf_event. */
#define PSC_NOOP_CTX(name, sec) \
	SEC(sec) int name(void *ctx) { return 0; }

/* An iterator over `target` (task, tcp, bpf_map, ...) that looks at nothing. */
#define PSC_NOOP_ITER(name, target) \
	SEC("iter/" #target) int name(struct bpf_iter__##target *ctx) { return 0; }
