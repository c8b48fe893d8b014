/* The profile probe's shared types: user space reads them through the skeleton. */
#pragma once

#include "periscope.h"

/* Frames a stack keeps, at most: the kernel's default perf_event_max_stack. */
#define PSC_PROFILE_MAX_FRAMES 127

/* What a sample is counted under: a process and the ids of its two stacks in `stacks`,
 * each negative when it has none (a kernel thread's user stack, a sample taken in user
 * mode's kernel stack) or when it could not be kept (PSC_PROFILE_STACK_LOST). */
struct psc_profile_key {
	__u32 tgid;
	__s32 user_stack;
	__s32 kernel_stack;
	__u32 pad;
	/* The process's name (its group leader's), for processes gone before user space
	 * reads the counts. */
	char comm[PSC_COMM_LEN];
};

/* A stack id standing for a stack the stack map had no room for. */
#define PSC_PROFILE_STACK_LOST (-2)

/* The slots of the `counters` array. */
enum psc_profile_counter {
	/* Samples of a process the probe looks at, recorded or not. */
	PSC_PROFILE_SAMPLES,
	/* Samples of an idle CPU: not recorded. */
	PSC_PROFILE_IDLE,
	/* Stacks whose bucket in the stack map held another stack: recorded as lost. */
	PSC_PROFILE_COLLISIONS,
	/* Samples not recorded because `counts` was full. */
	PSC_PROFILE_FOLDED,
	PSC_PROFILE_COUNTERS,
};
