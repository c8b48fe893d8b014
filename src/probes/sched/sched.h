/* The sched probe's shared types: user space reads them through the skeleton. */
#pragma once

#include "periscope.h"

/* A series: an executable (its group leader's name) within a cgroup v2. */
struct psc_sched_key {
	char comm[PSC_COMM_LEN];
	__u64 cgroup;
};

/* The slots of the `counters` array. */
enum psc_sched_counter {
	/* New keys refused because `latency` was full: their samples went to `overflow`. */
	PSC_SCHED_FOLDED,
	/* Run-queue waits not measured: the task storage for a stamp could not be had. */
	PSC_SCHED_UNSTAMPED,
	PSC_SCHED_COUNTERS,
};
