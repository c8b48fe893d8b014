/* Types shared by process.bpf.c and its Rust loader. */
#pragma once

#include "periscope.h"

struct psc_exe_key {
	char comm[PSC_COMM_LEN];
};

struct psc_process_stats {
	__u64 execs;
	__u64 exits_ok;     /* exit status 0 */
	__u64 exits_error;  /* exit status other than 0 */
	__u64 exits_signal; /* killed by a signal */
	__u64 oom_kills;
};
