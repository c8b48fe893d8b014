/*
 * tcp: connections per process and peer, from TCP state changes alone.
 *
 * Everything comes from tp_btf/inet_sock_set_state, which fires a handful of times per
 * connection and never per packet: a connect starts at CLOSE -> SYN_SENT (in the
 * connecting process), succeeds at SYN_SENT -> ESTABLISHED or fails at SYN_SENT -> CLOSE
 * (the socket's error says why); an accepted connection is SYN_RECV -> ESTABLISHED,
 * owned by the process that listens on its port (learned at CLOSE -> LISTEN); at the
 * final CLOSE, and every sample_interval_secs while it is open (an iterator over the
 * table of followed sockets), the kernel's own counters of the socket (data bytes sent
 * and received, retransmitted segments, smoothed RTT) are added to its series. So the
 * traffic itself costs nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "periscope.h"
#include "histogram.h"
#include "tcp.h"
#include "tenants.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define EHOSTUNREACH 113
#define ENETUNREACH 101
#define EEXIST 17

PSC_EXPORT_TYPES(struct psc_tcp_key, struct psc_tcp_stats, struct psc_tcp_histograms,
		 struct psc_tcp_listener_key, struct psc_tcp_listener, struct psc_tcp_listening,
		 enum psc_tcp_counter, enum psc_tcp_hist_layout);

/* Per socket, from its connect or accept. */
struct psc_tcp_sock {
	struct psc_tcp_key key;
	__u64 started_ns;
	/* The socket's cookie: a socket that takes over the memory of one whose close went
	 * unseen has another, so the sampler never reads it for the old one. */
	__u64 cookie;
	/* The socket's totals as far as they were added to its series, by the periodic
	 * sampler or at close; under `lock`, which the two take in turn. */
	__u64 sent_added;
	__u64 received_added;
	__u32 retransmits_added;
	struct bpf_spin_lock lock;
	__u8 established;
	/* Its open went to the overflow series: so does its close, or the two would part. */
	__u8 folded;
	/* Past its final CLOSE, under `lock`: the sampler leaves it alone. */
	__u8 closed;
	/* The tenant slot of its process, whose share its series counts in. */
	__u8 tenant;
	__u8 pad[4];
};

PSC_PERCPU_ARRAY(counters, __u64, PSC_TCP_COUNTERS);

/* Per socket, keyed by its address, from its connect or accept to its final CLOSE (every
 * TCP socket passes CLOSE before it is freed; a close the program missed, as when the
 * kernel skips a run that would recurse on its CPU, is found by the sampler, or by the
 * next socket at that address). A preallocated hash, capped by user space
 * (probes.tcp.max_connections): measured on the connection loop, socket storage and
 * hashes that allocate per entry cost about 4 us more per connection, in allocations and
 * RCU frees, than taking a free preallocated entry. */
PSC_HASH(tcp_socks, __u64, struct psc_tcp_sock, 65536);

static __always_inline struct psc_tcp_sock *sock_of(const struct sock *sk)
{
	__u64 id = (__u64)sk;

	return bpf_map_lookup_elem(&tcp_socks, &id);
}


/* The process listening on each port, learned at listen() and forgotten when its last
 * listening socket closes. */
PSC_HASH_NO_PREALLOC(listeners, struct psc_tcp_listener_key, struct psc_tcp_listener, 16384);

/* The port each listening socket took, by the socket's address: at its close the kernel
 * has already released an automatically chosen port, so the socket no longer says. */
PSC_HASH_NO_PREALLOC(listening, __u64, struct psc_tcp_listening, 16384);

/* Series; capped by user space (probes.tcp.max_series). Per CPU: a connection's
 * changes run on whichever CPU handles its packets, and plain adds to a CPU's own copy
 * cost less than atomic adds to a shared one. */
PSC_PERCPU_HASH(series, struct psc_tcp_key, struct psc_tcp_stats, 16384);

/* What found `series`, or its tenant's share of it (bpf/tenants.h), full: per tenant
 * slot and direction, at slot * 2 + (0: outbound, 1: inbound); tenant_slots x 2 entries,
 * set by user space. */
PSC_PERCPU_ARRAY(overflow, struct psc_tcp_stats, 2);

/* The histograms of each series in `series`, by the same key and cap. Allocated when a
 * series takes its first sample, not preallocated: about 4 KiB each, and a node has far
 * fewer series than the cap. Those of the overflow series are in overflow_histograms,
 * by the same index as `overflow`. */
PSC_HASH_NO_PREALLOC(histograms, struct psc_tcp_key, struct psc_tcp_histograms, 16384);
PSC_ARRAY(overflow_histograms, struct psc_tcp_histograms, 2);
/* Never written: what a new entry of `histograms` starts from (too large for the stack). */
PSC_ARRAY(histograms_zero, struct psc_tcp_histograms, 1);

/* The series of `key`, created if new; the overflow series of its direction when the
 * map is full or `sock->folded` says its open went there. */
/*
 * Names and cgroups of the processes that connect or listen, recorded at their first
 * connect or listen, for those gone before user space reads /proc (it deletes a
 * process's record when it folds its series). LRU: the oldest go first.
 */
PSC_LRU_HASH(processes, struct psc_process_key, struct psc_process, 16384);

/* Scratch for a record: too large for the stack beside the rest. */
PSC_PERCPU_ARRAY(process_scratch, struct psc_process, 1);

static __always_inline void record_process(__u32 tgid, __u16 gen)
{
	struct psc_process_key key = { .tgid = tgid, .gen = gen };
	struct psc_process *process;
	__u32 zero = 0;

	if (bpf_map_lookup_elem(&processes, &key))
		return;
	process = bpf_map_lookup_elem(&process_scratch, &zero);
	if (!process)
		return;
	__builtin_memset(process, 0, sizeof(*process));
	psc_current_process(process);
	bpf_map_update_elem(&processes, &key, process, BPF_ANY);
}

static __always_inline struct psc_tcp_stats *series_of(const struct psc_tcp_key *key,
						       __u8 *folded, __u32 tenant)
{
	static const struct psc_tcp_stats zero = {};
	struct psc_tcp_stats *stats;
	__u32 slot = tenant * 2 + (key->direction == PSC_TCP_INBOUND ? 1 : 0);

	if (*folded)
		return bpf_map_lookup_elem(&overflow, &slot);
	stats = bpf_map_lookup_elem(&series, key);
	if (stats)
		return stats;
	if (psc_tenant_reserve(tenant, 0)) {
		/* Fails when the map is full, or when another CPU just added the key. */
		if (bpf_map_update_elem(&series, key, &zero, BPF_NOEXIST))
			psc_tenant_release(tenant, 0);
		stats = bpf_map_lookup_elem(&series, key);
		if (stats)
			return stats;
		PSC_COUNT_IN(counters, PSC_TCP_FOLDED);
	}
	*folded = 1;
	return bpf_map_lookup_elem(&overflow, &slot);
}

static __always_inline struct psc_tcp_stats *stats_of(struct psc_tcp_sock *sock)
{
	return series_of(&sock->key, &sock->folded, sock->tenant);
}

/* The histograms of the series of `key` (`folded`: of its overflow series); those of the
 * overflow series when an entry cannot be made (counted). */
static __always_inline struct psc_tcp_histograms *
histograms_of(const struct psc_tcp_key *key, __u8 folded, __u32 tenant)
{
	struct psc_tcp_histograms *hist;
	__u32 slot = tenant * 2 + (key->direction == PSC_TCP_INBOUND ? 1 : 0), zero = 0;
	void *fresh;

	if (!folded) {
		hist = bpf_map_lookup_elem(&histograms, key);
		if (hist)
			return hist;
		fresh = bpf_map_lookup_elem(&histograms_zero, &zero);
		/* Another CPU may have just added it: then the lookup finds its entry. */
		if (fresh)
			bpf_map_update_elem(&histograms, key, fresh, BPF_NOEXIST);
		hist = bpf_map_lookup_elem(&histograms, key);
		if (hist)
			return hist;
		PSC_COUNT_IN(counters, PSC_TCP_HISTOGRAMS_FOLDED);
	}
	return bpf_map_lookup_elem(&overflow_histograms, &slot);
}

static __always_inline void record_rtt(struct psc_tcp_histograms *hist, __u32 srtt_us)
{
	__u32 idx = psc_hist_window_slot((__u64)srtt_us * 1000, PSC_TCP_RTT_LOW_OCTAVE,
					 PSC_TCP_RTT_SLOTS);

	if (idx >= PSC_TCP_RTT_SLOTS)
		return;
	__sync_fetch_and_add(&hist->rtt[idx], 1);
	__sync_fetch_and_add(&hist->rtt_sum_us, srtt_us);
}

static __always_inline void record_duration(struct psc_tcp_histograms *hist, __u64 took_ns)
{
	__u32 idx = psc_hist_window_slot(took_ns, PSC_TCP_DURATION_LOW_OCTAVE,
					 PSC_TCP_DURATION_SLOTS);

	if (idx >= PSC_TCP_DURATION_SLOTS)
		return;
	__sync_fetch_and_add(&hist->duration[idx], 1);
	__sync_fetch_and_add(&hist->duration_sum_ns, took_ns);
}

/* Starts following `sk` with `fresh`. An entry already there is one whose close went
 * unseen (the socket at this address now is another): its open connection is taken
 * back. NULL when the table is full: counted. */
static __always_inline struct psc_tcp_sock *sock_track(const struct sock *sk,
						       struct psc_tcp_sock *fresh)
{
	struct psc_tcp_sock *stale;
	__u64 id = (__u64)sk;
	long err;

	fresh->cookie = bpf_get_socket_cookie((void *)sk);
	err = bpf_map_update_elem(&tcp_socks, &id, fresh, BPF_NOEXIST);
	if (err == -EEXIST) {
		stale = bpf_map_lookup_elem(&tcp_socks, &id);
		if (stale && stale->established && !stale->closed) {
			struct psc_tcp_stats *stats = stats_of(stale);

			if (stats)
				stats->active += -1;
		}
		err = bpf_map_update_elem(&tcp_socks, &id, fresh, BPF_EXIST);
	} else if (!err) {
		PSC_COUNT_IN(counters, PSC_TCP_SOCKS_ADDED);
	}
	if (err) {
		PSC_COUNT_IN(counters, PSC_TCP_UNTRACKED);
		return 0;
	}
	return bpf_map_lookup_elem(&tcp_socks, &id);
}

static __always_inline void sock_forget(const struct sock *sk)
{
	__u64 id = (__u64)sk;

	if (!bpf_map_delete_elem(&tcp_socks, &id))
		PSC_COUNT_IN(counters, PSC_TCP_SOCKS_REMOVED);
}

static __always_inline void set_peer(struct psc_tcp_key *key, const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	key->family = family;
	if (family == AF_INET)
		__builtin_memcpy(key->addr, &sk->__sk_common.skc_daddr, 4);
	else
		BPF_CORE_READ_INTO(&key->addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
}

static __always_inline void listener_key_of(const struct sock *sk,
					    struct psc_tcp_listener_key *key)
{
	key->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	key->port = sk->__sk_common.skc_num;
	key->pad = 0;
}

static __always_inline void listener_opened(const struct sock *sk)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	__u16 gen = psc_generation(task);
	struct psc_tcp_listener fresh = {
		.cgroup = psc_task_cgroup_id(task), .tgid = tgid, .gen = gen, .sockets = 1
	};
	__u8 skipped = filter_cgroups && psc_cgroup_skipped(task);
	struct psc_tcp_listening socket = { .tgid = tgid, .gen = gen };
	struct psc_tcp_listener *known;
	__u64 id = (__u64)sk;
	long err;

	if (!skipped)
		record_process(tgid, gen);
	listener_key_of(sk, &socket.key);
	known = bpf_map_lookup_elem(&listeners, &socket.key);
	if (!known) {
		err = bpf_map_update_elem(&listeners, &socket.key, &fresh, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			PSC_COUNT_IN(counters, PSC_TCP_LISTENERS_REFUSED);
			return;
		}
		if (!err) {
			PSC_COUNT_IN(counters, PSC_TCP_LISTENERS_ADDED);
			if (bpf_map_update_elem(&listening, &id, &socket, BPF_ANY))
				PSC_COUNT_IN(counters, PSC_TCP_LISTENERS_REFUSED);
			return;
		}
		known = bpf_map_lookup_elem(&listeners, &socket.key);
		if (!known)
			return;
	}
	if (bpf_map_update_elem(&listening, &id, &socket, BPF_ANY)) {
		PSC_COUNT_IN(counters, PSC_TCP_LISTENERS_REFUSED);
		return;
	}
	/* The newest listener takes the port over (a new version of a service started
	 * beside the old one); its close gives it back. */
	socket.previous_tgid = known->tgid;
	socket.previous_gen = known->gen;
	socket.previous_cgroup = known->cgroup;
	bpf_map_update_elem(&listening, &id, &socket, BPF_EXIST);
	known->tgid = tgid;
	known->gen = gen;
	known->cgroup = fresh.cgroup;
	__sync_fetch_and_add(&known->sockets, 1);
}

static __always_inline void listener_closed(const struct sock *sk)
{
	struct psc_tcp_listening *socket;
	struct psc_tcp_listener *known;
	__u64 id = (__u64)sk;

	socket = bpf_map_lookup_elem(&listening, &id);
	if (!socket)
		return;
	known = bpf_map_lookup_elem(&listeners, &socket->key);
	if (known) {
		if (known->tgid == socket->tgid && known->gen == socket->gen &&
		    socket->previous_tgid) {
			known->tgid = socket->previous_tgid;
			known->gen = socket->previous_gen;
			known->cgroup = socket->previous_cgroup;
		}
		__sync_fetch_and_add(&known->sockets, -1);
		if ((__s32)known->sockets <= 0 && !known->seeded &&
		    !bpf_map_delete_elem(&listeners, &socket->key))
			PSC_COUNT_IN(counters, PSC_TCP_LISTENERS_REMOVED);
	}
	bpf_map_delete_elem(&listening, &id);
}

/* A socket's data bytes so far: bytes_sent counts retransmitted data again, and
 * bytes_received counts the peer's FIN as one (its sequence number). SOCK_DONE is set
 * when the peer's FIN arrived (a local close or a reset shuts the receive side down
 * without one). */
struct psc_tcp_totals {
	__u64 sent;
	__u64 received;
	__u32 retransmits;
	__u32 srtt_us;
};

static __always_inline void totals_of(const struct tcp_sock *tp, struct psc_tcp_totals *t)
{
	__u64 sent = tp->bytes_sent, retrans = tp->bytes_retrans;
	__u64 received = tp->bytes_received;

	if ((tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags & (1UL << SOCK_DONE)) &&
	    received > 0)
		received--;
	t->sent = sent > retrans ? sent - retrans : 0;
	t->received = received;
	t->retransmits = tp->total_retrans;
	t->srtt_us = tp->srtt_us >> 3;
}

/* Turns `t` into what it adds to the socket's series since the last time, and marks it
 * added. Counters that a sample caught mid-update never make a series go back. */
static __always_inline void take_delta(struct psc_tcp_sock *sock, struct psc_tcp_totals *t)
{
	__u64 sent = t->sent, received = t->received;
	__u32 retransmits = t->retransmits;

	t->sent = sent > sock->sent_added ? sent - sock->sent_added : 0;
	t->received = received > sock->received_added ? received - sock->received_added : 0;
	t->retransmits = retransmits > sock->retransmits_added ?
				 retransmits - sock->retransmits_added : 0;
	if (sent > sock->sent_added)
		sock->sent_added = sent;
	if (received > sock->received_added)
		sock->received_added = received;
	if (retransmits > sock->retransmits_added)
		sock->retransmits_added = retransmits;
}

static __always_inline void add_totals(struct psc_tcp_stats *stats, const struct psc_tcp_totals *t)
{
	stats->sent_bytes += t->sent;
	stats->received_bytes += t->received;
	stats->retransmits += t->retransmits;
}

/* The final CLOSE of a counted connection: what its totals add since the last sample
 * joins its series, with one RTT sample. */
static __always_inline void close_established(const struct sock *sk, struct psc_tcp_sock *sock)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	struct psc_tcp_histograms *hist;
	struct psc_tcp_stats *stats;
	struct psc_tcp_totals t;

	sock->established = 0;
	if (!tp) {
		bpf_spin_lock(&sock->lock);
		sock->closed = 1;
		bpf_spin_unlock(&sock->lock);
		stats = stats_of(sock);
		if (stats)
			stats->active += -1;
		return;
	}
	totals_of(tp, &t);
	bpf_spin_lock(&sock->lock);
	sock->closed = 1;
	take_delta(sock, &t);
	bpf_spin_unlock(&sock->lock);
	stats = stats_of(sock);
	if (!stats)
		return;
	stats->active += -1;
	add_totals(stats, &t);
	hist = histograms_of(&sock->key, sock->folded, sock->tenant);
	if (hist)
		record_rtt(hist, t.srtt_us);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(psc_tcp_state, const struct sock *sk, int oldstate, int newstate)
{
	struct psc_tcp_stats *stats;
	struct psc_tcp_sock *sock;
	__u16 family = sk->__sk_common.skc_family;
	__u64 now;

	if (sk->sk_protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;

	if (newstate == TCP_LISTEN) {
		listener_opened(sk);
		return 0;
	}
	/* A listener's close; its other change, to SYN_RECV, is a child socket cloned from
	 * it, which the accepted connection's ESTABLISHED covers. */
	if (oldstate == TCP_LISTEN) {
		if (newstate == TCP_CLOSE)
			listener_closed(sk);
		return 0;
	}

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		struct task_struct *task = bpf_get_current_task_btf();
		struct psc_tcp_sock fresh = {};

		if (filter_cgroups && psc_cgroup_skipped(task))
			return 0;
		fresh.key.tgid = task->tgid;
		fresh.key.gen = psc_generation(task);
		fresh.tenant = psc_tenant_slot(task);
		record_process(fresh.key.tgid, fresh.key.gen);
		fresh.key.direction = PSC_TCP_OUTBOUND;
		fresh.key.port = bpf_ntohs(sk->__sk_common.skc_dport);
		set_peer(&fresh.key, sk);
		fresh.started_ns = bpf_ktime_get_ns();
		sock_track(sk, &fresh);
		return 0;
	}

	/* A simultaneous open (SYN_SENT -> SYN_RECV -> ESTABLISHED, as a socket connecting
	 * to its own port does) is the outbound socket's success. */
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED &&
	    (sock = sock_of(sk)) &&
	    sock->key.direction == PSC_TCP_OUTBOUND && !sock->established)
		oldstate = TCP_SYN_SENT;
	else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct psc_tcp_sock fresh = {};
		struct psc_tcp_listener_key at;
		struct psc_tcp_listener *owner;

		listener_key_of(sk, &at);
		owner = bpf_map_lookup_elem(&listeners, &at);
		/* The owner's tenant now, not at its listen(): this runs in a softirq, and
		 * the owner's cgroup may have become known since. */
		if (owner && (filter_cgroups || tenant_slots > 1)) {
			__u32 tenant = psc_cgroup_tenant_of(owner->cgroup);

			if (filter_cgroups && tenant == PSC_TENANT_DROPPED)
				return 0;
			fresh.tenant = psc_tenant_slot_of(tenant);
		}
		fresh.key.tgid = owner ? owner->tgid : 0;
		fresh.key.gen = owner ? owner->gen : 0;
		fresh.key.direction = PSC_TCP_INBOUND;
		fresh.key.port = at.port;
		set_peer(&fresh.key, sk);
		fresh.established = 1;
		sock = sock_track(sk, &fresh);
		if (!sock)
			return 0;
		stats = stats_of(sock);
		if (stats) {
			stats->opened += 1;
			stats->active += 1;
		}
		return 0;
	}

	/* The other changes (closing handshakes) matter only at their final CLOSE: no
	 * storage lookup for them. */
	if (newstate != TCP_CLOSE && !(oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED))
		return 0;
	sock = sock_of(sk);
	if (!sock)
		return 0;
	now = bpf_ktime_get_ns();

	if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
		struct psc_tcp_histograms *hist;

		sock->established = 1;
		stats = stats_of(sock);
		if (!stats)
			return 0;
		stats->opened += 1;
		stats->active += 1;
		hist = histograms_of(&sock->key, sock->folded, sock->tenant);
		if (hist)
			record_duration(hist, now - sock->started_ns);
		return 0;
	}

	if (oldstate == TCP_SYN_SENT) {
		int err = sk->sk_err;
		__u32 reason = PSC_TCP_OTHER;

		if (err == ECONNREFUSED)
			reason = PSC_TCP_REFUSED;
		else if (err == ETIMEDOUT)
			reason = PSC_TCP_TIMEOUT;
		else if (err == EHOSTUNREACH || err == ENETUNREACH)
			reason = PSC_TCP_UNREACHABLE;
		else if (err == 0)
			reason = PSC_TCP_ABORTED;
		stats = stats_of(sock);
		if (stats && reason < PSC_TCP_FAILURES)
			stats->failures[reason] += 1;
		sock_forget(sk);
		return 0;
	}

	if (sock->established)
		close_established(sk, sock);
	sock_forget(sk);
	return 0;
}


/* The periodic sample of open connections, run by user space every
 * probes.tcp.sample_interval_secs over the socket table: what each connection's totals
 * added since the last sample joins its series, and its smoothed RTT is one sample of
 * the RTT histogram, so long connections show their traffic while they last. Under the
 * entry's lock, an entry that is not `closed` and whose socket still has its cookie
 * names a live socket: its final CLOSE would wait for the lock. A socket found closed
 * here is one whose close the program missed: it is closed for it.
 *
 * Two programs walk the table, and user space runs the first the kernel accepts: an
 * iterator over its entries (iter/bpf_map_elem), and a syscall program, attached
 * nowhere and run on demand (BPF_PROG_TEST_RUN), that walks it with
 * bpf_for_each_map_elem. Kernels differ in which they load: some refuse
 * iter/bpf_map_elem outright, and raw tracepoint programs may not take a bpf_spin_lock.
 * Both visit only the followed sockets, in every network namespace (iter/tcp would walk
 * every socket of one namespace). */
static __always_inline void sample_sock(__u64 addr, struct psc_tcp_sock *sock)
{
	struct psc_tcp_histograms *hist;
	struct psc_tcp_stats *stats;
	struct psc_tcp_totals t = {};
	struct psc_tcp_key key;
	struct tcp_sock *tp;
	__u8 folded, tenant, gone = 0, stale, established;

	tp = bpf_core_cast((void *)addr, struct tcp_sock);
	bpf_spin_lock(&sock->lock);
	if (sock->closed) {
		bpf_spin_unlock(&sock->lock);
		return;
	}
	/* Another socket at this address, which the program does not follow: this one's
	 * close went unseen, and its totals since the last sample are lost with it. */
	stale = tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter != sock->cookie;
	established = sock->established;
	if (established && !stale) {
		totals_of(tp, &t);
		take_delta(sock, &t);
	}
	/* Only an established socket: a connecting one is followed from before the kernel
	 * stores its SYN_SENT, so CLOSE is what it shows for a moment. */
	if (stale || (established &&
		      tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_CLOSE)) {
		sock->closed = 1;
		gone = 1;
	}
	/* The entry may belong to another socket as soon as the lock is let go. */
	key = sock->key;
	folded = sock->folded;
	tenant = sock->tenant;
	bpf_spin_unlock(&sock->lock);
	if (!established && !gone)
		return;
	stats = established ? series_of(&key, &folded, tenant) : 0;
	if (stats && !stale) {
		/* Atomic here: this runs in process context, and a state change in a
		 * softirq on this CPU may add to the same per-CPU value at any moment. */
		__sync_fetch_and_add(&stats->sent_bytes, t.sent);
		__sync_fetch_and_add(&stats->received_bytes, t.received);
		__sync_fetch_and_add(&stats->retransmits, t.retransmits);
		hist = histograms_of(&key, folded, tenant);
		if (hist)
			record_rtt(hist, t.srtt_us);
	}
	if (gone) {
		if (stats)
			__sync_fetch_and_add(&stats->active, -1);
		if (!bpf_map_delete_elem(&tcp_socks, &addr))
			PSC_COUNT_IN(counters, PSC_TCP_SOCKS_REMOVED);
	}
}

SEC("iter/bpf_map_elem")
int psc_tcp_iter(struct bpf_iter__bpf_map_elem *ctx)
{
	struct psc_tcp_sock *sock;
	__u64 *id = ctx->key;
	__u64 addr;

	if (!id)
		return 0;
	addr = *id;
	/* The map's own value pointer, which the lock needs. */
	sock = bpf_map_lookup_elem(&tcp_socks, &addr);
	if (sock)
		sample_sock(addr, sock);
	return 0;
}

static long sample_entry(struct bpf_map *map, __u64 *id, struct psc_tcp_sock *sock, void *ctx)
{
	sample_sock(*id, sock);
	return 0;
}

SEC("syscall")
int psc_tcp_walk(void *ctx)
{
	bpf_for_each_map_elem(&tcp_socks, sample_entry, 0, 0);
	return 0;
}
