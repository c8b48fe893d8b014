/* Types shared by tcp.bpf.c and its Rust loader. */
#pragma once

#include "periscope.h"
#include "process.h"
#include "native.h"

/*
 * The connect-duration and RTT histograms count native buckets at the kernel's schema
 * (bpf/native.h), over the octaves of nanoseconds their values reach, not all 48 of
 * bpf/histogram.h: both fit one 4 KiB allocation per series. Slot 0 is the zero
 * bucket; slot s > 0 is kernel bucket FIRST + s - 1, FIRST being the bucket that holds
 * 2^LOW_OCTAVE ns.
 * - RTTs are whole microseconds below 2^29 (the kernel's srtt_us is a u32 of eighths):
 *   0, or 1,000 to 5.4e11 ns, octaves 9 to 38, every one in its own bucket.
 * - Connects take from about 5 us on loopback to the SYN retries' minutes: octaves 10
 *   (1.02 us) to 40 (37 minutes) get their own buckets; one shorter counts in the first,
 *   one longer in the last (its sum stays exact).
 */
enum psc_tcp_hist_layout {
	PSC_TCP_RTT_LOW_OCTAVE = 9,
	PSC_TCP_RTT_HIGH_OCTAVE = 38,
	PSC_TCP_RTT_SLOTS =
		2 + (PSC_TCP_RTT_HIGH_OCTAVE - PSC_TCP_RTT_LOW_OCTAVE + 1) * PSC_NATIVE_THRESHOLDS,
	PSC_TCP_DURATION_LOW_OCTAVE = 10,
	PSC_TCP_DURATION_HIGH_OCTAVE = 40,
	PSC_TCP_DURATION_SLOTS = 2 + (PSC_TCP_DURATION_HIGH_OCTAVE -
				      PSC_TCP_DURATION_LOW_OCTAVE + 1) * PSC_NATIVE_THRESHOLDS,
};

enum psc_tcp_direction {
	PSC_TCP_OUTBOUND = 1, /* connected by the process */
	PSC_TCP_INBOUND = 2,  /* accepted on one of its listening ports */
};

enum psc_tcp_failure {
	PSC_TCP_REFUSED = 0,
	PSC_TCP_TIMEOUT = 1,
	PSC_TCP_UNREACHABLE = 2,
	PSC_TCP_ABORTED = 3, /* closed by its process before an answer came */
	PSC_TCP_OTHER = 4,
	PSC_TCP_FAILURES = 5,
};

/* One series: a process and a peer. `port` is the peer's for outbound connections and
 * the local listening port for inbound ones, never an ephemeral port. */
struct psc_tcp_key {
	__u32 tgid;
	__u8 direction;
	__u8 family; /* AF_INET or AF_INET6 */
	__u16 port;
	__u8 addr[16]; /* the peer; IPv4 in the first 4 bytes */
	__u16 gen; /* the process's generation (process.h) */
	__u16 pad;
};

struct psc_tcp_stats {
	__u64 opened;
	__s64 active;
	__u64 failures[PSC_TCP_FAILURES];
	__u64 sent_bytes;
	__u64 received_bytes;
	__u64 retransmits;
};

/* A series' histograms, shared by the CPUs (atomic adds: a few per connection), apart
 * from its per-CPU counters, which would take them once per CPU. */
struct psc_tcp_histograms {
	__u64 duration_sum_ns;
	__u64 rtt_sum_us;
	__u64 duration[PSC_TCP_DURATION_SLOTS];
	__u64 rtt[PSC_TCP_RTT_SLOTS];
};

/* A listening port: the same port in two network namespaces is two listeners. */
struct psc_tcp_listener_key {
	__u32 netns; /* the namespace's inode number, as in /proc/PID/ns/net */
	__u16 port;
	__u16 pad;
};

/* The process that owns a listening port: the last one to listen there. `sockets`
 * counts its listening sockets (SO_REUSEPORT, or a listen() that fails on a taken port,
 * add one each for a while); a listener found in /proc at start is `seeded`, with no
 * count, and is kept: its close is not seen. Its cgroup gives, at each accept, its
 * tenant (bpf/tenants.h): a listener often starts before the agent knows its cgroup. */
struct psc_tcp_listener {
	__u64 cgroup;
	__u32 tgid;
	__u32 sockets;
	__u16 gen;
	__u8 seeded;
	__u8 pad[5];
};

/* One listening socket: its port, the process that listened on it, and the owner the
 * port had before, given back when this socket closes while still the owner. */
struct psc_tcp_listening {
	struct psc_tcp_listener_key key;
	__u32 tgid;
	__u32 previous_tgid;
	__u16 gen;
	__u16 previous_gen;
	__u32 pad;
	__u64 previous_cgroup;
};

enum psc_tcp_counter {
	PSC_TCP_FOLDED = 0,       /* series map full: folded into the overflow series */
	PSC_TCP_UNTRACKED = 1,    /* tcp_socks full: connection not followed */
	PSC_TCP_SOCKS_ADDED = 2,  /* with the next, the fill of tcp_socks */
	PSC_TCP_SOCKS_REMOVED = 3,
	PSC_TCP_LISTENERS_REFUSED = 4, /* listeners full: its connections count as unknown */
	PSC_TCP_LISTENERS_ADDED = 5,   /* with the next, the fill of listeners */
	PSC_TCP_LISTENERS_REMOVED = 6,
	PSC_TCP_HISTOGRAMS_FOLDED = 7, /* no histograms for a series: its overflow's took them */
	PSC_TCP_COUNTERS = 8,
};
