/*
 * http: the bytes of HTTP/1.x, Redis, PostgreSQL, MySQL and DNS connections, seen where
 * sockets send and receive. A connection's first request bytes tell its protocol
 * (request_verdict), or a MySQL server's greeting does (mysql_verdict); HTTP, Redis, and
 * PostgreSQL's and MySQL's statements are framed here (resp.h, pg.h, mysql.h), DNS in
 * user space. DNS over UDP takes a path of its own (udp_io).
 *
 * TCP connections are tracked from the moment they are established: a passive open
 * (SYN_RECV -> ESTABLISHED) is a server's connection, an active one (SYN_SENT ->
 * ESTABLISHED) a client's. Their state lives in socket storage, so it dies with the
 * socket. Every read and write on a socket passes sock_recv_length/sock_send_length;
 * when the socket is tracked, the program finds the syscall, fd and buffer in the
 * thread's saved registers and hands the length and a captured prefix to user space
 * over a ring buffer, where they are framed into requests and responses.
 *
 * No syscall tracepoint is used: any of those puts every syscall of every process on
 * the kernel's slow path (the guide's +39 ns on every other syscall, +204 ns on the
 * hooked ones). Socket tracepoints cost only socket I/O, and a connection whose first
 * bytes are of no protocol looked for costs one storage lookup per read or write after
 * that.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "periscope.h"
#include "http.h"

char LICENSE[] SEC("license") = PSC_LICENSE;

/* Set by user space before load: trace connections this host's processes make. */
const volatile __u8 trace_clients = 1;
/* Set by user space before load: the protocols looked for (PSC_PROTO_BIT of each). */
const volatile __u32 protocols = PSC_PROTO_BIT(PSC_PROTO_HTTP);
/* Set by user space before load: frame plain HTTP in the kernel and count it in series
 * slots, handing to user space only what the kernel cannot frame exactly. */
const volatile __u8 kernel_framing = 0;
/* Set by user space before load when spans are made: which requests the kernel framer
 * sends to user space for a span. A request without a traceparent and not made while
 * serving one is a root, kept when a random draw is under span_root_threshold (of
 * 2^32), or always; one with a traceparent is kept as span_parent says. The rest cost
 * nothing beyond their count. */
const volatile __u8 span_sampling = 0;
const volatile __u8 span_root_always = 0;
const volatile __u32 span_root_threshold = 0;
const volatile __u8 span_parent = 0;
/* The per-octave thresholds of native buckets of bytes (src/model/native.rs), as
 * psc_native_thresholds are those of durations. */
const volatile __u64 psc_bytes_thresholds[PSC_NATIVE_THRESHOLDS] = {};
/* The agent's own process: its scrapes and exports are not traced, or exporting a span
 * would make another. */
const volatile __u32 agent_tgid = 0;

/* Named here so that the skeleton gives user space these types, event kinds, roles
 * and counter slots. */
PSC_EXPORT_TYPES(struct psc_conn_key, struct psc_conn, struct psc_http_event,
		 enum psc_http_event_kind, enum psc_http_role, enum psc_http_counter,
		 struct psc_http_exchange, struct psc_http_stats, struct psc_http_native,
		 enum psc_http_method, enum psc_span_parent);
PSC_EXPORT_TYPES(enum psc_caller, enum psc_caller_family, struct psc_host);
PSC_EXPORT_TYPES(enum psc_l7_protocol, enum psc_resp_line, enum psc_sql_line,
		 enum psc_mysql_command, enum psc_mysql_reading, enum psc_mysql_caps,
		 struct psc_dns_pending_key, struct psc_dns_pending, enum psc_dns_line);

/* x86_64 syscall numbers. */
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDFILE 40
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_SPLICE 275
#define NR_SENDMMSG 307

#define AF_INET 2
#define AF_INET6 10
#define MSG_PEEK 2
#define PF_KTHREAD 0x00200000
#define PF_IO_WORKER 0x00000010

/* Reads that name no read syscall (io_uring) are seen in the skb being copied to the
 * reader (Linux 6.13 on). */
extern int bpf_dynptr_from_skb(struct __sk_buff *skb, __u64 flags,
			       struct bpf_dynptr *ptr__uninit) __ksym __weak;

/* Bit 30, set in the fd user space knows a connection by when the reads that showed it
 * had no fd to give (io_uring), far above any real fd: the rest is drawn at random. */
#define PSC_FD_UNKNOWN 0x40000000

/* What a connection's first bytes said. */
enum psc_http_verdict {
	PSC_VERDICT_UNKNOWN = 0,
	PSC_VERDICT_HTTP = 1,
	PSC_VERDICT_OTHER = 2, /* not HTTP/1.x: never looked at again */
	PSC_VERDICT_TLS = 3,   /* a TLS handshake: the uprobes may report the plaintext */
	PSC_VERDICT_REDIS = 4, /* a RESP command */
	/* A PostgreSQL startup message in plaintext: framed here (pg.h). */
	PSC_VERDICT_POSTGRES = 5,
	/* A MySQL server's greeting: framed here (mysql.h). */
	PSC_VERDICT_MYSQL = 6,
	/* DNS queries, in datagrams or after 2-byte lengths: paired by user space. */
	PSC_VERDICT_DNS = 7,
	/* A PostgreSQL SSL or GSS encryption request: the server's answer tells whether
	 * PostgreSQL or TLS follows. */
	PSC_VERDICT_POSTGRES_ENCRYPTED = 8,
};

/* Verdicts of plaintext the kernel frames. */
static __always_inline int framed_verdict(__u8 verdict)
{
	return verdict == PSC_VERDICT_HTTP || verdict == PSC_VERDICT_REDIS ||
	       verdict == PSC_VERDICT_POSTGRES || verdict == PSC_VERDICT_MYSQL;
}

/* Where a connection's exchanges are framed. */
enum psc_http_framing {
	PSC_FRAMED_IN_KERNEL = 0,
	PSC_FRAMED_IN_USER = 1, /* events per read and write, for ever after */
};

/* The request a thread serves, as far as spans go: the client calls it makes meanwhile
 * are its children, kept when it is. Given up after PSC_SERVING_NS, as user space does. */
struct psc_serving {
	__u64 since_ns;
	__u8 active;
	__u8 sampled;
	__u8 pad[6];
};

#define PSC_SERVING_NS 60000000000ULL

/* Which way the bytes of a kernel-framed connection flow now. */
enum psc_http_phase {
	PSC_PHASE_IDLE = 0,     /* between exchanges */
	PSC_PHASE_REQUEST = 1,  /* a request is being read or written */
	PSC_PHASE_RESPONSE = 2, /* its response is */
};

/* Bytes of a message cut by a read's end that a turn keeps for the next read. */
#define PSC_TURN_CARRY 32

/* The exchange a kernel-framed connection is in. Lengths are of whole messages, head
 * included: a message ends when its bytes reach the length its head announced. */
struct psc_turn {
	struct psc_http_series_key key; /* status filled by the response */
	struct psc_http_series_key cached_key; /* the key `slot` was looked up for */
	__u64 start_ns;
	__u64 request_bytes;
	__u64 request_length;
	__u64 response_bytes;
	__u64 response_length;
	__u32 request_head;
	__u32 response_head;
	__u32 tid;
	__u32 slot;
	__u8 slot_ok;
	__u8 phase;
	__u8 framing;
	__u8 sampled; /* a span of this exchange is made: user space has its start */
	__u16 line_len;
	/* PostgreSQL and MySQL: the first bytes of a message that the end of the last read
	 * cut, as far as the walk reads them (PostgreSQL's header, MySQL's header and the
	 * start of its payload). */
	__u8 header_len;
	__u8 pad2;
	__u8 header[PSC_TURN_CARRY];
	char line[PSC_HTTP_LINE];
};

/* Per TCP socket, from its establishment. */
struct psc_sock {
	struct psc_conn conn;
	__u32 tgid; /* the process and fd user space knows it by, once announced */
	__u32 fd;
	__u8 announced;
	__u8 closed;
	__u8 verdict;
	__u8 method_seen; /* bytes of the first method so far, while the verdict waits */
	__u16 gen; /* the process's generation, with tgid */
	/* A MySQL greeting's header was read alone: its payload, read next, decides. */
	__u8 greeting_split;
	/* MySQL: what its handshake told (mysql.h's PSC_MYSQL_ bits). */
	__u8 mysql;
	/* io_uring reads, from the skb: the sequence number after the last bytes seen,
	 * so that bytes a peek showed are not seen again when read. */
	__u32 rcv_next;
	__u32 rcv_seen;
	struct psc_turn turn;
};

PSC_SK_STORAGE(socks, struct psc_sock);

/* Series slots of kernel-framed exchanges, installed by user space from the first
 * exchange of each key, and what each slot counted per CPU. Sizes set by user space. */
PSC_HASH(slots, struct psc_http_series_key, __u32, 4096);
PSC_PERCPU_ARRAY(slot_stats, struct psc_http_stats, 1024);
PSC_ARRAY(slot_native, struct psc_http_native, 1024);

PSC_TASK_STORAGE(serving, struct psc_serving);

/* TLS connections by (process, fd): the uprobes know the fd, not the socket. */
PSC_HASH(tls_conns, struct psc_conn_key, struct psc_conn, 65536);

/* The OpenSSL call in flight on each thread. */
PSC_TASK_STORAGE(ssl_calls, struct psc_ssl_call);

/* The socket of each SSL object, from SSL_set_fd or a syscall made inside a call.
 * LRU: SSL objects are freed without notice; an evicted one is learned again. */
PSC_LRU_HASH(ssl_fds, struct psc_ssl_key, __u32, 65536);

PSC_RINGBUF(events, 8 * 1024 * 1024);

/* An event and its bytes, assembled here because it is too large for the stack. Twice
 * the capture size, so that the verifier can bound writes at any offset below it. */
struct scratch {
	struct psc_http_event event;
	char data[2 * PSC_HTTP_CAPTURE] __attribute__((aligned(8)));
	/* What a request head's traceparent said: 0 none, 1 its flag is not sampled, 2
	 * sampled. Here, not in the scan's state on the stack: the verifier tracks values
	 * on the stack, and a value more per header scanned is more states than it takes. */
	__u8 traceparent;
	/* The user buffer of the read or write in hand when it is one (read, write, recvfrom,
	 * sendto), else 0: where the answers' walks and a long HTTP head copy bytes past the
	 * first capture. */
	__u64 src;
	/* The DNS lookup a query starts, built here: too big for the stack under its calls. */
	struct psc_dns_pending lookup;
};

PSC_PERCPU_ARRAY(scratch, struct scratch, 1);

PSC_PERCPU_ARRAY(counters, __u64, PSC_HTTP_COUNTERS);

static __always_inline void fill_event(struct scratch *s, __u32 tgid, __u16 gen, __u32 fd,
				       __u64 len, __u8 kind, struct psc_conn *conn, __u8 tls)
{
	s->event.ts = bpf_ktime_get_ns();
	s->event.tgid = tgid;
	s->event.gen = gen;
	s->event.tid = (__u32)bpf_get_current_pid_tgid();
	s->event.fd = fd;
	s->event.len = len;
	s->event.kind = kind;
	s->event.role = conn->role;
	s->event.protocol = conn->protocol;
	s->event.datagram = 0;
	s->event.tls = tls;
	s->event.gap = conn->lost;
	s->event.server = conn->server;
	s->event.client = conn->client;
}

/* Returns 0 when the event is in the ring buffer. */
static __always_inline int emit(struct scratch *s, __u32 captured, int named)
{
	struct task_struct *task = bpf_get_current_task_btf();

	if (named)
		s->event.comm[0] = 0;
	else
		bpf_probe_read_kernel_str(s->event.comm, sizeof(s->event.comm),
					  task->group_leader->comm);
	if (captured > PSC_HTTP_CAPTURE)
		captured = PSC_HTTP_CAPTURE;
	s->event.captured = captured;
	/* No wakeup: user space drains on its own schedule, and a wakeup per event (an
	 * irq_work on this CPU) would cost more than the event itself. */
	if (bpf_ringbuf_output(&events, s, sizeof(s->event) + captured, BPF_RB_NO_WAKEUP)) {
		PSC_COUNT_IN(counters, PSC_HTTP_LOST_EVENTS);
		return -1;
	}
	return 0;
}

/* Emits an event of `conn`, remembering a loss so that the next event that gets through
 * tells user space its framing of the connection is stale. */
static __always_inline void emit_for(struct scratch *s, __u32 captured, struct psc_conn *conn)
{
	conn->lost = emit(s, captured, conn->named) ? 1 : 0;
}

/* Bytes of one read or write of pipelined messages that user space frames, captured
 * at most: a client's burst of a thousand pipelined requests fits. */
#define PSC_HTTP_BURST (16 * PSC_HTTP_CAPTURE)

/* A read or write of `ret` bytes being emitted in parts: from the user buffer `buf`,
 * or, for bytes received, from the skb behind `dp`, `skb_off` bytes in. */
struct burst {
	struct bpf_dynptr dp;
	__u64 buf;
	__u64 iovcnt; /* `buf` is an iovec array of this many (readv, writev); 0: a buffer */
	__u32 skb_off;
	__u32 ret;
	__u32 end;
	__u32 off;
	int named;
	int lost;
};

/* The size of the next part of a burst; `last` says whether it ends the burst. */
static __always_inline __u32 burst_size(const struct burst *b, int *last)
{
	__u32 n = b->end - b->off;

	*last = 0;
	if (n <= PSC_HTTP_CAPTURE)
		*last = 1;
	else
		n = PSC_HTTP_CAPTURE;
	asm volatile("%0 &= 0x1fff" : "+r"(n));
	if (n > PSC_HTTP_CAPTURE)
		n = PSC_HTTP_CAPTURE;
	return n;
}

/* Emits the part of `n` bytes now in the scratch (`n` is 0 when they could not be read,
 * which ends the burst). The last part carries whatever goes uncaptured in its length. */
static __always_inline long burst_emit(struct scratch *s, struct burst *b, __u32 n, int last)
{
	if (!n)
		last = 1;
	s->event.len = last ? b->ret - b->off : n;
	if (emit(s, n, b->named)) {
		b->lost = 1;
		return 1;
	}
	b->named = 1;
	b->off += n;
	return last;
}

/* Iovec segments a burst's part is looked for in, at most: a server's writev of
 * replies holds a few blocks of 16 KiB each (Redis) or a head and a body. */
#define PSC_BURST_SEGMENTS 16

/* Copies `n` bytes (at most PSC_HTTP_CAPTURE), `from` bytes into the data of `iovcnt`
 * iovecs at `iov`, to the scratch. Returns the count copied. Global, so that the
 * verifier checks its loop once. */
__noinline __u32 copy_iov_at(struct scratch *s, __u64 iov_addr, __u64 iovcnt, __u64 from, __u32 n)
{
	const struct iovec *iov = (const struct iovec *)iov_addr;
	__u64 seg_start = 0;
	__u32 got = 0;

	if (!s)
		return 0;
	for (int i = 0; i < PSC_BURST_SEGMENTS; i++) {
		struct iovec seg = {};
		__u64 skip, want;

		if (i >= iovcnt || got >= n)
			break;
		if (bpf_probe_read_user(&seg, sizeof(seg), &iov[i]))
			break;
		if (seg_start + seg.iov_len > from + got) {
			skip = from + got - seg_start;
			want = seg.iov_len - skip;
			if (want > n - got)
				want = n - got;
			asm volatile("%0 &= 0xfff" : "+r"(got));
			asm volatile("%0 &= 0x1fff" : "+r"(want));
			if (want > PSC_HTTP_CAPTURE)
				break;
			if (bpf_probe_read_user(&s->data[got], want, seg.iov_base + skip))
				break;
			got += want;
		}
		seg_start += seg.iov_len;
	}
	return got;
}

/* One part of a burst from user memory. The first part of a buffer is in the scratch
 * already. */
static long burst_part_user(__u64 i, struct burst *b)
{
	__u32 zero = 0, n;
	struct scratch *s;
	int last;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	n = burst_size(b, &last);
	if (b->iovcnt) {
		/* Every part, the first too: capture_iov stops a byte short of the capture.
		 * Fewer bytes than the part's: the segments beyond were not looked at. */
		if (copy_iov_at(s, b->buf, b->iovcnt, b->off, n) != n)
			n = 0;
	} else if (i > 0 && bpf_probe_read_user(s->data, n, (void *)(b->buf + b->off))) {
		n = 0;
	}
	return burst_emit(s, b, n, last);
}

/* One part of a burst from the skb. The first part is in the scratch already. */
static long burst_part_skb(__u64 i, struct burst *b)
{
	__u32 zero = 0, n;
	struct scratch *s;
	int last;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	n = burst_size(b, &last);
	if (i > 0 && bpf_dynptr_read(s->data, n, &b->dp, b->skb_off + b->off, 0))
		n = 0;
	return burst_emit(s, b, n, last);
}

/* Emits a read or write of `ret` bytes, whose first PSC_HTTP_CAPTURE bytes are in the
 * scratch, as consecutive events of at most PSC_HTTP_CAPTURE bytes each, up to
 * PSC_HTTP_BURST: from the user buffer `buf`, or from `skb` at `skb_off` when it is
 * given. To user space they are one stream of bytes in one direction, as the single
 * read or write was. */
static __always_inline int emit_burst(struct psc_conn *conn, __u64 buf, __u64 iovcnt,
				      const struct sk_buff *skb, __u32 skb_off, __u32 ret)
{
	struct burst b = {
		.buf = buf,
		.iovcnt = iovcnt,
		.skb_off = skb_off,
		.ret = ret,
		.end = ret > PSC_HTTP_BURST ? PSC_HTTP_BURST : ret,
		.named = conn->named,
	};

	if (!skb) {
		bpf_loop(PSC_HTTP_BURST / PSC_HTTP_CAPTURE, burst_part_user, &b, 0);
	} else {
		if (bpf_dynptr_from_skb((struct __sk_buff *)skb, 0, &b.dp))
			return -1;
		bpf_loop(PSC_HTTP_BURST / PSC_HTTP_CAPTURE, burst_part_skb, &b, 0);
	}
	conn->lost = b.lost;
	return 0;
}

/* Copies up to `limit` bytes (at most PSC_HTTP_CAPTURE) of `len` bytes received, `off`
 * bytes into `skb`. Returns the count. */
static __always_inline __u32 capture_skb(struct scratch *s, const struct sk_buff *skb, __u32 off,
					 __u32 len, __u32 limit)
{
	struct bpf_dynptr dp;
	__u32 want = len > limit ? limit : len;

	if (want > PSC_HTTP_CAPTURE)
		want = PSC_HTTP_CAPTURE;
	if (bpf_dynptr_from_skb((struct __sk_buff *)skb, 0, &dp) ||
	    bpf_dynptr_read(s->data, want, &dp, off, 0))
		return 0;
	return want;
}

/* Tells user space that this socket is now the connection on (tgid, fd), whatever it
 * knew of that fd before (a close it never saw: dup2, close_range, a lost event). */
static __always_inline void announce(struct psc_sock *sock, __u32 tgid, __u16 gen, __u32 fd)
{
	struct scratch *s;
	__u32 zero = 0;

	sock->tgid = tgid;
	sock->gen = gen;
	sock->fd = fd;
	sock->announced = 1;
	sock->closed = 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (s) {
		/* A new connection for user space: nothing before it can be stale. */
		sock->conn.lost = 0;
		sock->conn.named = 1;
		fill_event(s, tgid, gen, fd, 0, PSC_HTTP_OPEN, &sock->conn, 0);
		emit_for(s, 0, &sock->conn);
	}
	sock->conn.named = 0;
}

/* Copies up to `limit` bytes (a power of two, at most PSC_HTTP_CAPTURE) of the first
 * `len` bytes of an iovec array. */
static __always_inline __u32 capture_iov(struct scratch *s, const struct iovec *iov, __u64 iovcnt,
					 __u64 len, __u32 limit)
{
	__u64 off = 0;

	for (int i = 0; i < 8; i++) {
		struct iovec seg = {};
		__u64 want;

		if (i >= iovcnt || off >= limit - 1 || off >= len)
			break;
		if (bpf_probe_read_user(&seg, sizeof(seg), &iov[i]))
			break;
		want = seg.iov_len;
		if (want > len - off)
			want = len - off;
		/* One byte short of the limit, so that the masks below never cut. */
		if (want > limit - 1 - off)
			want = limit - 1 - off;
		/* Bounds the verifier can see, whatever the compiler reorders: both below the
		 * capture size, so the copy stays inside the doubled buffer. */
		asm volatile("%0 &= 0xfff" : "+r"(off));
		asm volatile("%0 &= 0xfff" : "+r"(want));
		if (bpf_probe_read_user(&s->data[off], want, seg.iov_base))
			break;
		off += want;
	}
	return off;
}

/* Copies up to `limit` bytes of what the syscall `nr` moved (`ret` bytes) into the
 * scratch: `arg` and `count` are its second and third arguments. Returns the count. */
static __always_inline __u32 capture(struct scratch *s, int nr, __u64 arg, __u64 count, int ret,
				     __u32 limit)
{
	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_RECVFROM: case NR_SENDTO: {
		__u32 want = ret > limit ? limit : ret;

		if (want > PSC_HTTP_CAPTURE)
			want = PSC_HTTP_CAPTURE;
		if (!bpf_probe_read_user(s->data, want, (void *)arg))
			return want;
		return 0;
	}
	case NR_READV: case NR_WRITEV:
		return capture_iov(s, (const struct iovec *)arg, count, ret, limit);
	case NR_RECVMSG: case NR_SENDMSG: {
		struct user_msghdr msg = {};

		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)arg))
			return capture_iov(s, msg.msg_iov, msg.msg_iovlen, ret, limit);
		return 0;
	}
	}
	return 0; /* sendfile, splice: file bytes, counted by length */
}

/* Whether bytes that open a request stream start like a RESP command: `*`, a count of at
 * most three digits, CRLF, and the first bulk string's `$`. */
static __always_inline __u8 resp_verdict(const char *data, __u32 captured)
{
	if (!(protocols & PSC_PROTO_BIT(PSC_PROTO_REDIS)))
		return PSC_VERDICT_OTHER;
	for (int i = 1; i <= 4; i++) {
		char c;

		if (i + 2 >= captured)
			return PSC_VERDICT_OTHER;
		c = data[i];
		if (c == '\r')
			return i > 1 && data[i + 1] == '\n' && data[i + 2] == '$' ? PSC_VERDICT_REDIS
									 : PSC_VERDICT_OTHER;
		if (c < '0' || c > '9')
			return PSC_VERDICT_OTHER;
	}
	return PSC_VERDICT_OTHER;
}

/* Whether bytes that open a request stream are a PostgreSQL startup message (a length
 * under 64 KiB, then protocol 3.0) or an SSL or GSS encryption request (length 8). */
static __always_inline __u8 postgres_verdict(const char *data, __u32 captured)
{
	if (!(protocols & PSC_PROTO_BIT(PSC_PROTO_POSTGRES)) || captured < 8 || data[1] != 0)
		return PSC_VERDICT_OTHER;
	if (data[4] == 0 && data[5] == 3 && data[6] == 0 && data[7] == 0)
		return PSC_VERDICT_POSTGRES;
	if (data[2] == 0 && data[3] == 8 && data[4] == 0x04 && (__u8)data[5] == 0xd2 &&
	    data[6] == 0x16 && (data[7] == 0x2f || data[7] == 0x30))
		return PSC_VERDICT_POSTGRES_ENCRYPTED;
	return PSC_VERDICT_OTHER;
}

/* Bytes of a DNS message looked at: its header and question (a name is 255 bytes at
 * most). */
#define PSC_DNS_CAPTURE 512

/* Whether `data` is a DNS message of one question and opcode QUERY: a query (QR clear,
 * no answer or authority records) or, with `answer`, a response. */
static __always_inline int dns_shaped(const char *data, __u32 captured, int answer)
{
	if (captured < 17 || ((data[2] & 0x80) != 0) != answer || (data[2] & 0x78) ||
	    data[4] != 0 || data[5] != 1)
		return 0;
	return answer || !(data[6] | data[7] | data[8] | data[9]);
}

/* Whether bytes that open a request stream are a DNS query over TCP: a 2-byte length,
 * then the message. */
static __always_inline __u8 dns_stream_verdict(const char *data, __u32 captured)
{
	__u32 length;

	if (!(protocols & PSC_PROTO_BIT(PSC_PROTO_DNS)) || captured < 19)
		return PSC_VERDICT_OTHER;
	length = (__u8)data[0] << 8 | (__u8)data[1];
	if (length < 17 || !dns_shaped(data + 2, captured - 2, 0))
		return PSC_VERDICT_OTHER;
	return PSC_VERDICT_DNS;
}

/* Whether bytes that open a response stream are a MySQL or MariaDB server's greeting:
 * one packet (a 3-byte length under 1 KiB, sequence number 0) of protocol 10, whose
 * server version starts with a digit. The server speaks first, so these come before any
 * request. Some clients read a packet's 4-byte header apart from its payload: `split`
 * carries a header read alone to the next read, and the verdict waits for it. */
static __always_inline __u8 mysql_verdict(const char *data, __u32 captured, __u8 *split)
{
	__u32 length;

	if (!(protocols & PSC_PROTO_BIT(PSC_PROTO_MYSQL)))
		return PSC_VERDICT_OTHER;
	if (*split) {
		*split = 0;
		return captured >= 2 && data[0] == 10 && data[1] >= '0' && data[1] <= '9'
			       ? PSC_VERDICT_MYSQL
			       : PSC_VERDICT_OTHER;
	}
	if (captured < 4)
		return PSC_VERDICT_OTHER;
	length = (__u8)data[0] | (__u8)data[1] << 8 | (__u8)data[2] << 16;
	if (length >= 1024 || length < 32 || data[3] != 0)
		return PSC_VERDICT_OTHER;
	if (captured == 4) {
		*split = 1;
		return PSC_VERDICT_UNKNOWN;
	}
	if (captured < 6 || data[4] != 10 || data[5] < '0' || data[5] > '9')
		return PSC_VERDICT_OTHER;
	return PSC_VERDICT_MYSQL;
}

/* Longest method token a request may start with (user space: MAX_METHOD_BYTES). */
#define PSC_HTTP_MAX_METHOD 16

/* A character of an RFC 9110 token, which is what a method is: `get`, `PURGE` and
 * `M-SEARCH` are methods too, reported as _OTHER by user space. */
static __always_inline int is_tchar(char c)
{
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

/*
 * Whether bytes that open a request stream start like a request line: a method token,
 * then a space. A client may write its method in pieces, down to a byte per write:
 * `seen` carries the method bytes earlier reads showed, and a short read leaves the
 * verdict to the next one.
 */
static __always_inline __u8 request_verdict(const char *data, __u32 captured, __u8 *seen)
{
	if (!*seen && captured >= 2 && data[0] == 0x16 && data[1] == 0x03)
		return protocols & PSC_PROTO_BIT(PSC_PROTO_HTTP) ? PSC_VERDICT_TLS : PSC_VERDICT_OTHER;
	if (!*seen && data[0] == '*')
		return resp_verdict(data, captured);
	if (!*seen && data[0] == 0 && captured >= 2 && data[1] == 0)
		return postgres_verdict(data, captured);
	/* No method, Redis command or TLS record starts with a byte this low. */
	if (!*seen && (__u8)data[0] < 0x16)
		return dns_stream_verdict(data, captured);
	if (!(protocols & PSC_PROTO_BIT(PSC_PROTO_HTTP)))
		return PSC_VERDICT_OTHER;
	for (int i = 0; i <= PSC_HTTP_MAX_METHOD; i++) {
		char c;

		if (i >= captured) {
			*seen += i;
			return PSC_VERDICT_UNKNOWN;
		}
		c = data[i];
		if (c == ' ')
			return *seen + i > 0 ? PSC_VERDICT_HTTP : PSC_VERDICT_OTHER;
		if (!is_tchar(c) || *seen + i >= PSC_HTTP_MAX_METHOD)
			return PSC_VERDICT_OTHER;
	}
	return PSC_VERDICT_OTHER;
}

/* Sets the role of a connection and its server's port (and, for clients, address).
 * Returns 0 for sockets that are not IPv4 or IPv6. */
static __always_inline int set_role(struct psc_conn *conn, const struct sock *sk, __u8 role)
{
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	conn->role = role;
	if (role == PSC_ROLE_SERVER) {
		conn->server.port = sk->__sk_common.skc_num;
		conn->client.port = bpf_ntohs(sk->__sk_common.skc_dport);
		conn->client.family = family;
		if (family == AF_INET)
			__builtin_memcpy(conn->client.addr, &sk->__sk_common.skc_daddr, 4);
		else
			BPF_CORE_READ_INTO(&conn->client.addr, sk,
					   __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		return 1;
	}
	conn->server.port = bpf_ntohs(sk->__sk_common.skc_dport);
	conn->server.family = family;
	if (family == AF_INET)
		__builtin_memcpy(conn->server.addr, &sk->__sk_common.skc_daddr, 4);
	else
		BPF_CORE_READ_INTO(&conn->server.addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	return 1;
}

/*
 * The kernel framer. HTTP/1.x alternates: request bytes, then response bytes, then the
 * next request. Only the first read or write of each turn is looked at, up to
 * PSC_HTTP_SCAN bytes (PSC_HTTP_HEAD_MAX for a head that runs on): the request line and
 * the headers that say how long the message is. Later bytes of the turn are only
 * counted, and the exchange is finished, timed and counted in its series slot when the
 * response's bytes reach the length its head announced. Anything else (pipelining,
 * chunked or close-delimited bodies, 1xx, Expect, Upgrade, CONNECT, heads longer than
 * PSC_HTTP_HEAD_MAX or split over reads, a method split over writes) hands the
 * connection to user space, with the exchange in flight, where every read and write
 * goes as an event to the framer that handles them all.
 */

/* Bytes of a turn's first read or write the kernel copies and frames from. */
#define PSC_HTTP_SCAN 1024
/* A head that runs past them (a large cookie or token) is copied again, up to this many
 * bytes, and must end within them, 16 short of their end (scan_head). */
#define PSC_HTTP_HEAD_MAX 4096
/* Offsets into the scratch's data (twice PSC_HTTP_CAPTURE, so a word loaded at the last
 * offset stays within it). */
#define PSC_SCAN_MASK (PSC_HTTP_HEAD_MAX - 1)

/* Longest Content-Length value taken, in digits: 10^15 bytes is past any real body. */
#define PSC_MAX_LENGTH_DIGITS 15

/* A little-endian 8-byte load from the scratch at any offset below the scan size. From
 * aligned words: the compiler turns an unaligned 8-byte load into eight byte loads. */
static __always_inline __u64 load64(const struct scratch *s, __u32 off)
{
	const __u64 *words = (const __u64 *)s->data;
	__u32 at = (off & PSC_SCAN_MASK) >> 3, shift = (off & 7) * 8;
	__u64 low = words[at];

	if (!shift)
		return low;
	return (low >> shift) | (words[at + 1] << (64 - shift));
}

/* Whether the `mask`ed bytes at `off`, with ASCII letters at `fold` lowered, are `want`. */
static __always_inline int bytes_are(const struct scratch *s, __u32 off, __u64 want, __u64 mask,
				     __u64 fold)
{
	return ((load64(s, off) | fold) & mask) == want;
}

/* What the headers of a message said. */
struct head_scan {
	__u32 n;          /* bytes captured */
	__u32 end;        /* bytes of the head, its empty line included; 0: not within n */
	__u64 length;     /* Content-Length */
	__u8 has_length;
	/* Transfer-Encoding, Expect, Upgrade, a second Content-Length, a bare LF: framed
	 * by user space. */
	__u8 unusual;
	__u8 request; /* a request's head: Expect and Upgrade matter */
};

/* Reads a Content-Length value at `off`; marks the scan unusual when it is not digits
 * followed by CR. */
static __always_inline void content_length(const struct scratch *s, __u32 off, struct head_scan *h)
{
	__u64 value = 0;
	int digits = 0;

	if (h->has_length) {
		h->unusual = 1;
		return;
	}
	for (int i = 0; i < 4; i++) {
		char c = s->data[off & PSC_SCAN_MASK];

		if (c != ' ' && c != '\t')
			break;
		off++;
	}
	for (int i = 0; i <= PSC_MAX_LENGTH_DIGITS; i++) {
		char c;

		if (off >= h->n)
			break;
		c = s->data[off & PSC_SCAN_MASK];
		if (c < '0' || c > '9') {
			if (c != '\r' || !digits)
				break;
			h->length = value;
			h->has_length = 1;
			return;
		}
		value = value * 10 + (c - '0');
		digits++;
		off++;
	}
	h->unusual = 1;
}

/* The sampled flag of a traceparent value at `off` (W3C: version-traceid-parentid-flags,
 * "00-" then 32, 16 and 2 hex digits): its last digit's low bit. User space checks the
 * whole value; here a value of the wrong shape counts as none. */
static __always_inline void traceparent_flag(struct scratch *s, __u32 off,
					     const struct head_scan *h)
{
	char c;

	for (int i = 0; i < 4; i++) {
		c = s->data[off & PSC_SCAN_MASK];
		if (c != ' ' && c != '\t')
			break;
		off++;
	}
	if (off + 55 > h->n || s->data[(off + 2) & PSC_SCAN_MASK] != '-' ||
	    s->data[(off + 35) & PSC_SCAN_MASK] != '-' || s->data[(off + 52) & PSC_SCAN_MASK] != '-')
		return;
	c = s->data[(off + 54) & PSC_SCAN_MASK];
	if (c >= '0' && c <= '9')
		s->traceparent = (c - '0') & 1 ? 2 : 1;
	else if (c >= 'a' && c <= 'f')
		s->traceparent = (c - 'a' + 10) & 1 ? 2 : 1;
}

/* The line after the LF at `p`: the empty line that ends the head, or a header the
 * framing depends on. Returns 1 when the scan is over. Global, so that the verifier
 * checks it once rather than at each of the scan's unrolled call sites. */
__noinline int line_after(struct scratch *s, __u32 p, struct head_scan *h)
{
	__u32 q = p + 1;
	char c;

	if (!s || !h)
		return 1;
	if (q + 2 > h->n)
		return 1; /* the head goes on past the bytes captured */
	c = s->data[q & PSC_SCAN_MASK];
	if (c == '\r') {
		if (s->data[(q + 1) & PSC_SCAN_MASK] != '\n')
			h->unusual = 1;
		h->end = q + 2;
		return 1;
	}
	if (c == '\n') {
		h->unusual = 1;
		return 1;
	}
	if (q + 16 > h->n)
		return 0; /* too short to be a header that matters, and followed by more */
	switch (c | 0x20) {
	case 'c': /* content-length: */
		if (bytes_are(s, q, 0x2d746e65746e6f63ULL, ~0ULL, 0x20202020202020ULL) &&
		    bytes_are(s, q + 8, 0x3a6874676e656cULL, 0xffffffffffffffULL, 0x202020202020ULL))
			content_length(s, q + 15, h);
		break;
	case 't': /* transfer-encoding:, traceparent: */
		if (bytes_are(s, q, 0x726566736e617274ULL, ~0ULL, 0x2020202020202020ULL) &&
		    bytes_are(s, q + 8, 0x6e69646f636e652dULL, ~0ULL, 0x2020202020202000ULL))
			h->unusual = 1;
		else if (bytes_are(s, q, 0x7261706563617274ULL, ~0ULL, 0x2020202020202020ULL) &&
			 bytes_are(s, q + 8, 0x3a746e65ULL, 0xffffffffULL, 0x202020ULL))
			traceparent_flag(s, q + 12, h);
		break;
	case 'e': /* expect: */
		if (bytes_are(s, q, 0x3a746365707865ULL, 0xffffffffffffffULL, 0x202020202020ULL))
			h->unusual = 1;
		break;
	case 'u': /* upgrade: */
		if (bytes_are(s, q, 0x3a65646172677075ULL, ~0ULL, 0x20202020202020ULL))
			h->unusual = 1;
		break;
	}
	return 0;
}

/* 0x80 in each byte of `w` that is `b` (repeated in every byte of `bytes`), 0 elsewhere. */
static __always_inline __u64 bytes_equal(__u64 w, __u64 bytes)
{
	__u64 x = w ^ bytes;

	return ~(((x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL) | x | 0x7f7f7f7f7f7f7f7fULL);
}

/* The index (0 to 7) of the lowest byte flagged in `flags`, which is not 0. */
static __always_inline __u32 first_flagged(__u64 flags)
{
	__u64 lowest = flags & -flags;

	return ((lowest >> 7) * 0x0001020304050607ULL) >> 56;
}

/* Whether the line after the LF at `p` may be one line_after acts on: the empty line,
 * Content-Length, Transfer-Encoding, traceparent, and in requests Expect and Upgrade.
 * Its first word, every byte lowered (CR and LF become '-' and '*'), tells most lines
 * apart without the call; line_after then checks exactly. */
static __always_inline int line_may_matter(const struct scratch *s, __u32 p, __u8 request)
{
	__u64 w = load64(s, p + 1) | 0x2020202020202020ULL;

	switch (w & 0xff) {
	case '-': case '*':
		return 1;
	case 'c': /* "content-" and then 'l' */
		return w == 0x2d746e65746e6f63ULL && (s->data[(p + 9) & PSC_SCAN_MASK] | 0x20) == 'l';
	case 't': /* "transfer", "tracepar" */
		return w == 0x726566736e617274ULL || w == 0x7261706563617274ULL;
	case 'e': /* "expect:" */
		return request && (w & 0xffffffffffffffULL) == 0x3a746365707865ULL;
	case 'u': /* "upgrade:" */
		return request && w == 0x3a65646172677075ULL;
	}
	return 0;
}

/* Words of the scan handled per loop step. */
#define PSC_SCAN_WORDS 8

/* PSC_SCAN_WORDS 8-byte words of the scan: the lines after each LF in them. */
static long scan_words(__u64 i, struct head_scan *h)
{
	__u32 zero = 0;
	struct scratch *s;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	for (int k = 0; k < PSC_SCAN_WORDS; k++) {
		__u32 off = (i * PSC_SCAN_WORDS + k) * 8;
		__u64 lf;

		if (off >= h->n)
			return 1;
		lf = bytes_equal(load64(s, off), 0x0a0a0a0a0a0a0a0aULL);
		for (int j = 0; j < 8 && lf; j++) {
			__u32 p = off + first_flagged(lf);

			lf &= lf - 1;
			if (p >= h->n)
				return 1;
			if (!line_may_matter(s, p, h->request))
				continue;
			if (line_after(s, p, h))
				return 1;
		}
	}
	return 0;
}

/* A search of a read's or write's first capture for a message that starts after its
 * first byte: requests or responses pipelined. */
struct next_head_scan {
	__u32 n;
	__u32 request;
	__u32 found;
};

/* A method token of capitals and then a space at `p`: how a pipelined request starts. */
static __always_inline int method_at(const struct scratch *s, __u32 p)
{
	for (int k = 0; k < 8; k++) {
		char c = s->data[(p + k) & (PSC_HTTP_CAPTURE - 1)];

		if (c == ' ')
			return k >= 3;
		if (c < 'A' || c > 'Z')
			return 0;
	}
	return 0;
}

/* "HTTP/1." at `p` of the capture, how a response starts. */
static __always_inline int status_line_at(const struct scratch *s, __u32 p)
{
	const __u64 *words = (const __u64 *)s->data;
	__u32 at = (p & (PSC_HTTP_CAPTURE - 1)) >> 3, shift = (p & 7) * 8;
	__u64 w = words[at];

	if (shift)
		w = (w >> shift) | (words[at + 1] << (64 - shift));
	return (w & 0xffffffffffffffULL) == 0x2e312f50545448ULL;
}

/* PSC_SCAN_WORDS words of the capture: a request line after a CRLF CRLF, or a status
 * line anywhere past the first byte. */
static long next_head_words(__u64 i, struct next_head_scan *h)
{
	__u32 zero = 0;
	struct scratch *s;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	for (int k = 0; k < PSC_SCAN_WORDS; k++) {
		const __u64 *words = (const __u64 *)s->data;
		__u32 word = (i * PSC_SCAN_WORDS + k) & (PSC_HTTP_CAPTURE / 8 - 1);
		__u64 hits;

		if (word * 8 + 16 > h->n)
			return 1;
		hits = bytes_equal(words[word], h->request ? 0x0a0a0a0a0a0a0a0aULL
							   : 0x4848484848484848ULL);
		for (int j = 0; j < 8 && hits; j++) {
			__u32 p = word * 8 + first_flagged(hits);

			hits &= hits - 1;
			if (h->request ? p >= 3 && s->data[(p - 1) & (PSC_HTTP_CAPTURE - 1)] == '\r' &&
					       s->data[(p - 2) & (PSC_HTTP_CAPTURE - 1)] == '\n' &&
					       method_at(s, p + 1)
				       : p > 0 && status_line_at(s, p)) {
				h->found = 1;
				return 1;
			}
		}
	}
	return 0;
}

/* Whether the `n` bytes captured of a read or write hold a request (or a response) that
 * follows another: pipelined messages, which may go on past the capture. */
static __always_inline int holds_pipelined(__u32 n, int request)
{
	struct next_head_scan h = { .n = n, .request = request, .found = 0 };

	bpf_loop(PSC_HTTP_CAPTURE / 8 / PSC_SCAN_WORDS, next_head_words, &h, 0);
	return h.found;
}

/* Scans the `n` captured bytes of a message's start for the end of its head and the
 * headers its framing depends on. */
static __always_inline void scan_head(struct head_scan *h, __u32 n, __u8 request)
{
	h->request = request;
	h->n = n > PSC_HTTP_HEAD_MAX - 16 ? PSC_HTTP_HEAD_MAX - 16 : n;
	h->end = 0;
	h->length = 0;
	h->has_length = 0;
	h->unusual = 0;
	bpf_loop(PSC_HTTP_HEAD_MAX / 8 / PSC_SCAN_WORDS, scan_words, h, 0);
}

/* A head that runs past the first capture (`n` bytes of `len`), copied again from the
 * buffer of the read or write in hand, up to PSC_HTTP_HEAD_MAX bytes, and scanned whole
 * into `out`. Global: the verifier checks this second scan once, apart from its callers. */
__noinline int psc_scan_head_again(struct head_scan *out, __u32 n, __u64 len, __u8 request)
{
	__u32 want = len > PSC_HTTP_HEAD_MAX ? PSC_HTTP_HEAD_MAX : len, zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct head_scan h;

	if (!s || !out || n < PSC_HTTP_SCAN || len <= n || !s->src)
		return 0;
	asm volatile("%0 &= 0x1fff" : "+r"(want));
	if (!want || bpf_probe_read_user(s->data, want, (void *)s->src))
		return 0;
	if (request)
		s->traceparent = 0;
	scan_head(&h, want, request);
	*out = h;
	return 0;
}

/* Scans the head of a message whose first `n` bytes of `len` are captured; one that runs
 * past them is scanned again whole, and only such heads pay for the second copy. */
static __always_inline void scan_long_head(struct head_scan *h, __u32 n, __u64 len,
					   __u8 request)
{
	scan_head(h, n, request);
	if (!h->end && !h->unusual)
		psc_scan_head_again(h, n, len, request);
}

/* The method of a request line whose token is `len` bytes long. */
static __always_inline __u8 method_id(const struct scratch *s, __u32 len)
{
	__u64 w = load64(s, 0);

	switch (len) {
	case 3:
		if ((w & 0xffffffff) == 0x20544547)
			return PSC_METHOD_GET;
		if ((w & 0xffffffff) == 0x20545550)
			return PSC_METHOD_PUT;
		break;
	case 4:
		if ((w & 0xffffffff) == 0x44414548)
			return PSC_METHOD_HEAD;
		if ((w & 0xffffffff) == 0x54534f50)
			return PSC_METHOD_POST;
		break;
	case 5:
		if ((w & 0xffffffffff) == 0x4543415254)
			return PSC_METHOD_TRACE;
		if ((w & 0xffffffffff) == 0x4843544150)
			return PSC_METHOD_PATCH;
		break;
	case 6:
		if ((w & 0xffffffffffff) == 0x4554454c4544)
			return PSC_METHOD_DELETE;
		break;
	case 7:
		if ((w & 0xffffffffffffff) == 0x5443454e4e4f43)
			return PSC_METHOD_CONNECT;
		if ((w & 0xffffffffffffff) == 0x534e4f4954504f)
			return PSC_METHOD_OPTIONS;
		break;
	}
	return PSC_METHOD_OTHER;
}

/* A request target being read: where it ends, and the hash of its path. */
struct target_scan {
	__u32 from;
	__u32 n;
	__u32 end;  /* the space after it; 0 while not found */
	__u32 query; /* past '?': the rest is not hashed */
	__u64 hash;
};

#define PSC_FNV_PRIME 1099511628211ULL

/* Eight bytes of a target, hashed a word at a time up to its '?' (the hash is the
 * kernel's own: user space never computes it). Bytes past `n` are never hashed into a
 * target that is taken, which must end before `n`. */
static long target_word(__u64 i, struct target_scan *t)
{
	__u32 zero = 0, off = t->from + i * 8, k;
	__u64 w, spaces, stops;
	struct scratch *s;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || off >= t->n)
		return 1;
	w = load64(s, off);
	spaces = bytes_equal(w, 0x2020202020202020ULL);
	stops = spaces | (t->query ? 0 : bytes_equal(w, 0x3f3f3f3f3f3f3f3fULL));
	if (!stops) {
		t->hash = (t->hash ^ w) * PSC_FNV_PRIME;
		return 0;
	}
	k = first_flagged(stops);
	if (!t->query && k)
		t->hash = (t->hash ^ (w & ((1ULL << (k * 8)) - 1))) * PSC_FNV_PRIME;
	t->query = 1;
	if (spaces) {
		t->end = off + first_flagged(spaces);
		return 1;
	}
	return 0;
}

/* Parses the request line at the start of the scratch into the turn: method, target
 * (kept, and hashed up to '?'), version. Returns 0 when user space must frame it. */
static __always_inline int request_line(const struct scratch *s, __u32 n, struct psc_turn *t)
{
	struct target_scan target = { .n = n, .hash = 14695981039346656037ULL };
	__u32 method_len = 0, end;

	for (int i = 0; i <= PSC_HTTP_MAX_METHOD; i++) {
		char c;

		if (i >= n)
			return 0;
		c = s->data[i];
		if (c == ' ') {
			method_len = i;
			break;
		}
		if (!is_tchar(c))
			return 0;
	}
	if (!method_len)
		return 0;
	target.from = method_len + 1;
	bpf_loop(PSC_HTTP_LINE / 8, target_word, &target, 0);
	end = target.end;
	/* The line is kept whole: method, space, target. */
	if (end <= target.from || end >= PSC_HTTP_LINE || end + 10 >= n)
		return 0;
	/* "HTTP/1.0" or "HTTP/1.1", then CR: what user space takes. */
	if (!bytes_are(s, end + 1, 0x2e312f50545448ULL, 0xffffffffffffffULL, 0) ||
	    (s->data[(end + 8) & PSC_SCAN_MASK] != '0' && s->data[(end + 8) & PSC_SCAN_MASK] != '1') ||
	    s->data[(end + 9) & PSC_SCAN_MASK] != '\r')
		return 0;
	t->key.method = method_id(s, method_len);
	t->key.path_hash = target.hash;
	t->line_len = end;
	__builtin_memcpy(t->line, s->data, PSC_HTTP_LINE);
	return t->key.method != PSC_METHOD_CONNECT;
}

/* The status of a status line at the start of the scratch, or 0. */
static __always_inline __u16 status_line(const struct scratch *s, __u32 n)
{
	char a = s->data[9], b = s->data[10], c = s->data[11];

	if (n < 13 || !bytes_are(s, 0, 0x2e312f50545448ULL, 0xffffffffffffffULL, 0) ||
	    s->data[8] != ' ' || (s->data[12] != ' ' && s->data[12] != '\r'))
		return 0;
	if (a < '1' || a > '5' || b < '0' || b > '9' || c < '0' || c > '9')
		return 0;
	return (a - '0') * 100 + (b - '0') * 10 + (c - '0');
}

static __always_inline int same_key(const struct psc_http_series_key *a,
				    const struct psc_http_series_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	for (int i = 0; i < sizeof(*a) / 8; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* Counts v in its native bucket of `buckets`, by `thresholds` (of ns or of bytes). */
static __always_inline void count_native(__u64 *buckets, __u64 v,
					 const volatile __u64 *thresholds)
{
	__u32 bucket = psc_native_bucket(v, thresholds, PSC_NATIVE_MAX_SCHEMA);

	if (bucket >= PSC_HIST_BUCKETS)
		bucket = PSC_HIST_BUCKETS - 1;
	__sync_fetch_and_add(&buckets[bucket], 1);
}

/* The read or write in hand: who made it, on which fd. */
struct io {
	__u32 tgid;
	__u32 fd;
	__u16 gen;
};

/* The read or write in hand, from a global function's arguments: five at most, so the
 * process and its fd travel as one `who`, the tgid in the upper half. */
static __always_inline struct io io_of(__u64 who, __u32 gen)
{
	struct io io = { .tgid = who >> 32, .fd = (__u32)who, .gen = gen };

	return io;
}

/* This CPU's scratch. */
static __always_inline struct scratch *this_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

/* Fills the scratch's event and exchange record for the connection's exchange in flight;
 * the event names the connection as the read or write in hand does. */
static __always_inline void exchange_record(struct scratch *s, struct psc_sock *sock,
					    const struct io *io, __u8 kind, __u64 end_ns)
{
	struct psc_http_exchange *x = (struct psc_http_exchange *)s->data;
	struct psc_turn *t = &sock->turn;

	fill_event(s, io->tgid, io->gen, io->fd, 0, kind, &sock->conn, 0);
	x->key = t->key;
	x->start_ns = t->start_ns;
	x->end_ns = end_ns;
	x->request_body = t->request_length - t->request_head;
	x->response_body = t->response_length - t->response_head;
	x->tid = t->tid;
	x->skip = 0;
	x->mid_stream = 0;
	x->sampled = t->sampled;
	x->line_len = t->line_len;
	__builtin_memcpy(x->line, t->line, PSC_HTTP_LINE);
}

/* Whether the request starting now (`now`) makes a span; a server's request becomes what
 * its thread serves. The same choices as user space's sampler (spans.rs), made where
 * they save the most: an unsampled request is never sent. */
static __always_inline __u8 span_sampled(__u8 role, __u8 traceparent, __u64 now)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct psc_serving *mark = 0;
	__u8 sampled;

	if (role == PSC_ROLE_CLIENT && !traceparent)
		mark = bpf_task_storage_get(&serving, task, 0, 0);
	if (traceparent)
		sampled = span_parent == PSC_PARENT_ASK ||
			  (span_parent == PSC_PARENT_FLAG && traceparent == 2);
	else if (mark && mark->active && now - mark->since_ns < PSC_SERVING_NS)
		sampled = mark->sampled; /* a call made while serving: its parent decides */
	else
		sampled = span_root_always || bpf_get_prandom_u32() < span_root_threshold;
	/* Only client calls read what a thread serves: untraced, no mark is kept. */
	if (role == PSC_ROLE_SERVER && trace_clients) {
		mark = bpf_task_storage_get(&serving, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (mark) {
			mark->since_ns = now;
			mark->active = 1;
			mark->sampled = sampled;
		}
	}
	return sampled;
}

/* A server's exchange that started at `since` is over: its thread serves it no more. */
static __always_inline void end_serving(__u64 since)
{
	struct psc_serving *mark;

	mark = bpf_task_storage_get(&serving, bpf_get_current_task_btf(), 0, 0);
	if (mark && mark->since_ns == since)
		mark->active = 0;
}

/* The response reached its length: the exchange is counted in its slot, or sent to user
 * space when its series has none yet. A sampled one goes to user space either way. */
static __always_inline void finish_turn(struct scratch *s, struct psc_sock *sock,
					const struct io *io)
{
	struct psc_turn *t = &sock->turn;
	__u64 now = bpf_ktime_get_ns();
	struct psc_http_stats *stats;
	struct psc_http_native *native;
	__u64 took, request_body, response_body;

	t->phase = PSC_PHASE_IDLE;
	if (span_sampling && trace_clients && sock->conn.role == PSC_ROLE_SERVER)
		end_serving(t->start_ns);
	if (!t->slot_ok || !same_key(&t->cached_key, &t->key)) {
		__u32 *slot = bpf_map_lookup_elem(&slots, &t->key);

		t->slot_ok = 0;
		if (slot) {
			t->cached_key = t->key;
			t->slot = *slot;
			t->slot_ok = 1;
		}
	}
	stats = t->slot_ok ? bpf_map_lookup_elem(&slot_stats, &t->slot) : 0;
	native = t->slot_ok ? bpf_map_lookup_elem(&slot_native, &t->slot) : 0;
	if (stats && native) {
		took = now - t->start_ns;
		request_body = t->request_length - t->request_head;
		response_body = t->response_length - t->response_head;
		count_native(native->duration, took, psc_native_thresholds);
		stats->duration_sum += took;
		/* Database operations have no body histograms. */
		if (t->key.protocol == PSC_PROTO_HTTP) {
			count_native(native->request_body, request_body, psc_bytes_thresholds);
			count_native(native->response_body, response_body, psc_bytes_thresholds);
			stats->request_body_sum += request_body;
			stats->response_body_sum += response_body;
		}
		PSC_COUNT_IN(counters, PSC_HTTP_KERNEL_FRAMED);
		if (!t->sampled)
			return;
		exchange_record(s, sock, io, PSC_HTTP_SPAN_END, now);
		emit_for(s, sizeof(struct psc_http_exchange), &sock->conn);
		sock->conn.named = 1;
		return;
	}
	exchange_record(s, sock, io, PSC_HTTP_EXCHANGE, now);
	emit_for(s, sizeof(struct psc_http_exchange), &sock->conn);
	sock->conn.named = 1;
}

/* finish_turn, global: the verifier checks it once, not at each protocol's end of turn. */
__noinline int psc_finish(struct psc_sock *sock, __u64 who, __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return 0;
	finish_turn(s, sock, &io);
	return 0;
}

/* Ends the turn through psc_finish; `s` is the same per-CPU scratch it fills. */
static __always_inline void finish(struct scratch *s, struct psc_sock *sock, const struct io *io)
{
	psc_finish(sock, (__u64)io->tgid << 32 | io->fd, io->gen);
}

/* What the framer tells socket_io to do with the read or write. */
enum psc_frame_outcome {
	PSC_FRAME_KEPT = 0,   /* counted in the kernel: nothing to send */
	PSC_FRAME_HANDOFF = 1, /* hand the connection over, with this read or write */
};

/* Hands the connection to user space. The request framed so far, if any, goes first, and
 * `skip` bytes of the read or write in hand belong to it. */
static __always_inline void hand_off(struct scratch *s, struct psc_sock *sock,
				     const struct io *io, int pending, __u32 skip)
{
	struct psc_http_exchange *x = (struct psc_http_exchange *)s->data;

	sock->turn.framing = PSC_FRAMED_IN_USER;
	PSC_COUNT_IN(counters, PSC_HTTP_HANDOFFS);
	exchange_record(s, sock, io, PSC_HTTP_HANDOFF, 0);
	x->skip = skip;
	x->mid_stream = framed_verdict(sock->verdict);
	/* A turn just finished (the bytes after a PostgreSQL ReadyForQuery) awaits nothing. */
	if (!pending || sock->turn.phase == PSC_PHASE_IDLE)
		x->line_len = 0;
	emit_for(s, sizeof(struct psc_http_exchange), &sock->conn);
	sock->conn.named = 1;
}

/* The first bytes of a request: `n` of them captured. */
static __always_inline int request_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
					  __u64 len, const struct io *io)
{
	struct psc_turn *t = &sock->turn;
	struct head_scan h;

	if (t->phase == PSC_PHASE_RESPONSE)
		PSC_COUNT_IN(counters, PSC_HTTP_ABANDONED); /* its length never came */
	t->phase = PSC_PHASE_IDLE;
	t->sampled = 0;
	if (!request_line(s, n, t))
		return PSC_FRAME_HANDOFF;
	s->traceparent = 0;
	scan_long_head(&h, n, len, 1);
	if (!h.end || h.unusual || h.end + h.length < len)
		return PSC_FRAME_HANDOFF; /* split, unusual, or more than one request */
	t->key.tgid = io->tgid;
	t->key.gen = io->gen;
	t->key.role = sock->conn.role;
	t->key.status = 0;
	t->key.port = sock->conn.server.port;
	if (sock->conn.role == PSC_ROLE_CLIENT) {
		t->key.family = sock->conn.server.family;
		__builtin_memcpy(t->key.addr, sock->conn.server.addr, sizeof(t->key.addr));
	}
	t->tid = (__u32)bpf_get_current_pid_tgid();
	t->start_ns = bpf_ktime_get_ns();
	t->request_head = h.end;
	t->request_length = h.end + h.length;
	t->request_bytes = len;
	t->phase = PSC_PHASE_REQUEST;
	if (span_sampling && !span_sampled(sock->conn.role, s->traceparent, t->start_ns)) {
		PSC_COUNT_IN(counters, PSC_HTTP_SPANS_UNSAMPLED);
	} else if (span_sampling) {
		/* The head, for the trace context user space reads from it. */
		PSC_COUNT_IN(counters, PSC_HTTP_SPANS_SAMPLED);
		t->sampled = 1;
		fill_event(s, io->tgid, io->gen, io->fd, len, PSC_HTTP_SPAN_START, &sock->conn, 0);
		s->event.ts = t->start_ns;
		emit_for(s, h.end, &sock->conn);
		sock->conn.named = 1;
	}
	return PSC_FRAME_KEPT;
}

/* The first bytes of the response: `n` of them captured, of `len`. */
static __always_inline int response_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
					   __u64 len)
{
	struct psc_turn *t = &sock->turn;
	__u16 status = status_line(s, n);
	struct head_scan h;

	if (!status || status < 200 || t->request_bytes != t->request_length)
		return PSC_FRAME_HANDOFF; /* 1xx, an early answer, or not a status line */
	scan_long_head(&h, n, len, 0);
	if (!h.end || h.unusual)
		return PSC_FRAME_HANDOFF;
	t->key.status = status;
	t->response_head = h.end;
	t->response_length = h.end;
	/* A response to HEAD, a 204 and a 304 have no body, whatever their headers say. */
	if (t->key.method != PSC_METHOD_HEAD && status != 204 && status != 304) {
		if (!h.has_length)
			return PSC_FRAME_HANDOFF; /* its body runs until close */
		t->response_length += h.length;
	}
	t->response_bytes = 0;
	t->phase = PSC_PHASE_RESPONSE;
	return PSC_FRAME_KEPT;
}

/* The protocols whose answers the framer walks message by message. */
static __always_inline int walked(__u8 protocol)
{
	return protocol == PSC_PROTO_POSTGRES || protocol == PSC_PROTO_MYSQL;
}

/* Whether the framer must see the bytes of this read or write of `len`: it opens a turn,
 * or, in a PostgreSQL or MySQL answer, holds the start of the next message. */
static __always_inline int opens_turn(const struct psc_turn *t, int request, __u64 len)
{
	if (request)
		return t->phase != PSC_PHASE_REQUEST;
	if (t->phase == PSC_PHASE_REQUEST)
		return 1;
	return t->phase == PSC_PHASE_RESPONSE && walked(t->key.protocol) &&
	       t->response_length < t->response_bytes + len;
}

/* Bytes of a turn after its first read or write: counted, and the response finished
 * when they reach its length. Returns PSC_FRAME_HANDOFF with `skip` set when they run
 * past what the request announced: a request pipelined behind it. */
static __always_inline int turn_goes_on(struct scratch *s, struct psc_sock *sock,
					const struct io *io, __u64 len, int request, __u32 *skip)
{
	struct psc_turn *t = &sock->turn;

	if (request) {
		__u64 before = t->request_bytes;

		t->request_bytes += len;
		if (t->request_bytes <= t->request_length)
			return PSC_FRAME_KEPT;
		*skip = t->request_length - before;
		t->request_bytes = t->request_length;
		return PSC_FRAME_HANDOFF;
	}
	if (t->phase != PSC_PHASE_RESPONSE)
		return PSC_FRAME_KEPT; /* an answer to no request framed here */
	t->response_bytes += len;
	/* A walked answer's length is where its next message starts (pg.h, mysql.h). */
	if (walked(t->key.protocol) || t->response_bytes < t->response_length)
		return PSC_FRAME_KEPT;
	finish(s, sock, io);
	/* Bytes past the announced length answer nothing: user space frames from here. */
	if (t->response_bytes > t->response_length)
		t->framing = PSC_FRAMED_IN_USER;
	return PSC_FRAME_KEPT;
}


/* The key of a database operation starting now, named by `hash`, and its start. */
static __always_inline void database_call_key(struct psc_sock *sock, const struct io *io,
					      __u8 protocol, __u64 hash)
{
	struct psc_turn *t = &sock->turn;

	t->key.tgid = io->tgid;
	t->key.gen = io->gen;
	t->key.role = sock->conn.role;
	t->key.method = 0;
	t->key.status = 0;
	t->key.protocol = protocol;
	t->key.port = sock->conn.server.port;
	t->key.path_hash = hash;
	if (sock->conn.role == PSC_ROLE_CLIENT) {
		t->key.family = sock->conn.server.family;
		__builtin_memcpy(t->key.addr, sock->conn.server.addr, sizeof(t->key.addr));
	}
	t->tid = (__u32)bpf_get_current_pid_tgid();
	t->start_ns = bpf_ktime_get_ns();
}

/* A byte being looked for in the scratch, a few words at a time. */
struct byte_find {
	__u64 bytes; /* the byte, in each of the eight */
	__u32 from;
	__u32 end;
	__u32 at; /* where it was found; 0 while not */
	__u32 zero; /* the scratch's key, here rather than on the callback's own stack */
};

/* Words looked at per call of the loop's callback: a call costs more than a word's test,
 * and most texts searched (a query, a status line) are a few words long. */
#define PSC_FIND_WORDS 4

static long find_byte_words(__u64 i, struct byte_find *f)
{
	__u32 off = f->from + i * 8 * PSC_FIND_WORDS;
	struct scratch *s;
	__u64 flags;

	s = bpf_map_lookup_elem(&scratch, &f->zero);
	if (!s)
		return 1;
	for (int w = 0; w < PSC_FIND_WORDS; w++, off += 8) {
		if (off >= f->end)
			return 1;
		flags = bytes_equal(load64(s, off), f->bytes);
		if (f->end - off < 8)
			flags &= (1ULL << ((f->end - off) * 8)) - 1;
		if (flags) {
			f->at = off + first_flagged(flags);
			return 1;
		}
	}
	return 0;
}

/* The first of the byte repeated in `bytes` in the scratch from `from` to `end` (within
 * the scan), or 0. */
static __always_inline __u32 find_byte(__u32 from, __u32 end, __u64 bytes)
{
	struct byte_find f = { .bytes = bytes, .from = from, .end = end };

	bpf_loop(PSC_HTTP_SCAN / 8 / PSC_FIND_WORDS, find_byte_words, &f, 0);
	return f.at;
}

/* A database operation started now, `len` bytes written: a client's may make a span,
 * the child of what its thread serves. A server's makes none: database spans are the
 * client's. */
static __always_inline void database_call_starts(struct scratch *s, struct psc_sock *sock,
						 __u64 len, const struct io *io)
{
	struct psc_turn *t = &sock->turn;

	if (!span_sampling || sock->conn.role != PSC_ROLE_CLIENT)
		return;
	if (!span_sampled(PSC_ROLE_CLIENT, 0, t->start_ns)) {
		PSC_COUNT_IN(counters, PSC_HTTP_SPANS_UNSAMPLED);
		return;
	}
	PSC_COUNT_IN(counters, PSC_HTTP_SPANS_SAMPLED);
	t->sampled = 1;
	fill_event(s, io->tgid, io->gen, io->fd, len, PSC_HTTP_SPAN_START, &sock->conn, 0);
	s->event.ts = t->start_ns;
	emit_for(s, 0, &sock->conn);
	sock->conn.named = 1;
}

/* The bytes of a read or write being walked message by message: the first `n` of them
 * from offset `base` are in the scratch, all `len` in its user buffer `src` (0 when it
 * is not one: an iovec array or an skb). */
struct read_window {
	__u64 src;
	__u32 len;
	__u32 base;
	__u32 n;
	__u32 pad;
};

/* Makes bytes [from, from + want) of the read visible in the scratch, copying them from
 * its buffer when they are past what the scratch holds. */
static __always_inline int window_holds(struct scratch *s, struct read_window *r, __u32 from,
					__u32 want)
{
	__u32 got;

	if (from >= r->base && from + want <= r->base + r->n)
		return 1;
	if (!r->src || from + want > r->len)
		return 0;
	got = r->len - from;
	if (got > PSC_HTTP_SCAN)
		got = PSC_HTTP_SCAN;
	asm volatile("%0 &= 0x7ff" : "+r"(got));
	if (!got || bpf_probe_read_user(s->data, got, (void *)(r->src + from)))
		return 0;
	r->base = from;
	r->n = got;
	return want <= got;
}

#include "resp.h"
#include "pg.h"
#include "mysql.h"

/*
 * The framer's entry points, as global functions: the verifier checks each once, on its
 * own, instead of along every path through socket_io, which would exceed its budget.
 * `who` is the tgid in the upper half and the fd in the lower one (five arguments at
 * most). PSC_FRAME_HANDOFF when the connection must go to user space.
 */
__noinline int psc_frame_request(struct psc_sock *sock, __u32 n, __u64 len, __u64 who, __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return PSC_FRAME_HANDOFF;
	if (sock->conn.protocol == PSC_PROTO_REDIS)
		return resp_request_starts(s, sock, n, len, &io);
	if (sock->conn.protocol == PSC_PROTO_POSTGRES)
		return psc_frame_pg_request(sock, n, len, who, gen);
	if (sock->conn.protocol == PSC_PROTO_MYSQL)
		return psc_frame_mysql_request(sock, n, len, who, gen);
	return request_starts(s, sock, n, len, &io);
}

/* The first bytes of an HTTP or Redis response (PostgreSQL's and MySQL's are walked). Returns -1 when
 * they were counted, or how many of them the kernel framed when the connection must go
 * to user space. */
__noinline int psc_frame_response(struct psc_sock *sock, __u32 n, __u64 len, __u64 who, __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();
	__u32 skip = 0;

	if (!sock || !s)
		return 0;
	if (sock->conn.protocol == PSC_PROTO_REDIS) {
		if (resp_response_starts(s, sock, n) != PSC_FRAME_KEPT)
			return 0;
	} else if (response_starts(s, sock, n, len) != PSC_FRAME_KEPT) {
		return 0;
	}
	turn_goes_on(s, sock, &io, len, 0, &skip);
	return -1;
}

/* Bytes within a turn. Returns -1 when they were counted, or how many of them belong to
 * the request in flight when the connection must go to user space. */
__noinline int psc_frame_more(struct psc_sock *sock, __u64 len, int request, __u64 who, __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();
	__u32 skip = 0;

	if (!sock || !s)
		return -1;
	if (turn_goes_on(s, sock, &io, len, request, &skip) == PSC_FRAME_KEPT)
		return -1;
	return skip & 0x7fffffff;
}

__noinline int psc_frame_hand_off(struct psc_sock *sock, int pending, __u32 skip, __u64 who,
				  __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return 0;
	hand_off(s, sock, &io, pending, skip);
	return 0;
}

/* The addresses this node's traced clients connect from to non-loopback servers: a
 * server here called from one of them leaves the call to the client's series. Few (one
 * per address of the node and its containers), so never pruned; refusals are counted.
 * Sized by user space. */
PSC_HASH(local_clients, struct psc_host, __u8, 4096);
/* The addresses of callers from elsewhere that have series of their own; the rest share
 * one overflow address. Sized by user space. */
PSC_HASH(remote_callers, struct psc_host, __u8, 1024);

/* Host `h` of an address of `family` (IPv4 in its first 4 bytes), IPv4-mapped IPv6 as
 * IPv4. Returns 0 for loopback addresses, which are of this node whoever holds them. */
static __always_inline int host_of_addr(__u16 family, const __u32 w[4], struct psc_host *h)
{
	__u32 v4 = w[0];

	if (family == AF_INET6) {
		if (w[0] || w[1] || w[2] != bpf_htonl(0xffff)) {
			if (!w[0] && !w[1] && !w[2] && w[3] == bpf_htonl(1))
				return 0;
			h->family = AF_INET6;
			__builtin_memcpy(h->addr, w, 16);
			return 1;
		}
		v4 = w[3];
	} else if (family != AF_INET) {
		return 0;
	}
	if ((bpf_ntohl(v4) >> 24) == 127)
		return 0;
	h->family = AF_INET;
	__builtin_memcpy(h->addr, &v4, sizeof(v4));
	return 1;
}

/* The local (`local`) or remote address of `sk` (host_of_addr). */
static __always_inline int host_of(const struct sock *sk, int local, struct psc_host *h)
{
	__u16 family = sk->__sk_common.skc_family;
	__u32 w[4] = {};

	/* Read by helper, as the IPv6 words are: a direct load here would be merged with
	 * host_of_addr's load of w[3], one instruction for two kinds of pointer, which the
	 * verifier refuses. */
	if (family == AF_INET && local)
		BPF_CORE_READ_INTO(&w[0], sk, __sk_common.skc_rcv_saddr);
	else if (family == AF_INET)
		BPF_CORE_READ_INTO(&w[0], sk, __sk_common.skc_daddr);
	else if (local)
		BPF_CORE_READ_INTO(&w, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
	else
		BPF_CORE_READ_INTO(&w, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	return host_of_addr(family, w, h);
}

/* A traced client connecting to a non-loopback server: its address is noted before its
 * SYN leaves, so the server, on this node or not, is established only after. */
static __always_inline void note_local_client(const struct sock *sk)
{
	struct psc_host server = {}, client = {};
	__u8 one = 1;

	if (!host_of(sk, 0, &server) || !host_of(sk, 1, &client))
		return;
	if (bpf_map_lookup_elem(&local_clients, &client))
		return;
	if (bpf_map_update_elem(&local_clients, &client, &one, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&local_clients, &client))
		PSC_COUNT_IN(counters, PSC_HTTP_LOCAL_CLIENTS_REFUSED);
}

/* Who called an accepted connection, from its client's address (enum psc_caller). */
static __always_inline __u8 caller_of(const struct psc_peer *client)
{
	struct psc_host caller = {};
	__u32 w[4];
	__u8 one = 1;

	__builtin_memcpy(w, client->addr, sizeof(w));
	if (!host_of_addr(client->family, w, &caller) ||
	    bpf_map_lookup_elem(&local_clients, &caller))
		return PSC_CALLER_LOCAL;
	if (bpf_map_lookup_elem(&remote_callers, &caller))
		return PSC_CALLER_REMOTE;
	if (!bpf_map_update_elem(&remote_callers, &caller, &one, BPF_NOEXIST) ||
	    bpf_map_lookup_elem(&remote_callers, &caller))
		return PSC_CALLER_REMOTE;
	PSC_COUNT_IN(counters, PSC_HTTP_CALLERS_REFUSED);
	return PSC_CALLER_OVERFLOW;
}

/* A server's series key names its caller from elsewhere: by address, or the overflow.
 * A server's turns keep it: they set only the rest of their keys. */
static __always_inline void key_caller(struct psc_http_series_key *key, const struct psc_conn *conn)
{
	key->family = 0;
	__builtin_memset(key->addr, 0, sizeof(key->addr));
	if (conn->client.caller == PSC_CALLER_REMOTE) {
		key->family = conn->client.family;
		__builtin_memcpy(key->addr, conn->client.addr, sizeof(key->addr));
	} else if (conn->client.caller == PSC_CALLER_OVERFLOW) {
		key->family = PSC_FAMILY_OVERFLOW;
	}
}

/* A server's connection learns who called it: as it is established, or when adopted at
 * its first request if it was accepted before the agent started (user space noted the
 * clients of this node connected then, before the programs were attached). Global: the
 * verifier checks it once, off the framer's deepest call chains. */
__noinline int psc_learn_caller(struct psc_sock *sock)
{
	if (!sock)
		return 0;
	sock->conn.client.caller = caller_of(&sock->conn.client);
	key_caller(&sock->turn.key, &sock->conn);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(psc_http_state, const struct sock *sk, int oldstate, int newstate)
{
	struct psc_sock *sock;

	if (newstate == TCP_SYN_SENT) {
		if (trace_clients)
			note_local_client(sk);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED) {
		struct psc_conn fresh = {};
		__u8 role;

		if (oldstate == TCP_SYN_RECV)
			role = PSC_ROLE_SERVER;
		else if (oldstate == TCP_SYN_SENT && trace_clients)
			role = PSC_ROLE_CLIENT;
		else
			return 0;
		if (!set_role(&fresh, sk, role))
			return 0;
		/* Created zeroed (the whole state is too large for the stack), then filled. */
		sock = bpf_sk_storage_get(&socks, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!sock) {
			PSC_COUNT_IN(counters, PSC_HTTP_CONNS_REFUSED);
			return 0;
		}
		sock->conn = fresh;
		if (role == PSC_ROLE_SERVER)
			psc_learn_caller(sock);
		return 0;
	}
	/* The local side closed (FIN_WAIT1, LAST_ACK) or the connection died (CLOSE): no
	 * more requests or responses. A peer's FIN alone (CLOSE_WAIT) is not the end: a
	 * server may still answer a client that half-closed. */
	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	sock = bpf_sk_storage_get(&socks, (void *)sk, 0, 0);
	if (sock && sock->turn.phase == PSC_PHASE_RESPONSE &&
	    sock->turn.framing == PSC_FRAMED_IN_KERNEL) {
		/* Closed before the response reached its length: a framer in user space
		 * would not count it either. */
		sock->turn.phase = PSC_PHASE_IDLE;
		PSC_COUNT_IN(counters, PSC_HTTP_ABANDONED);
	}
	if (!sock || !sock->announced || sock->closed)
		return 0;
	sock->closed = 1;
	{
		struct scratch *s;
		__u32 zero = 0;

		s = bpf_map_lookup_elem(&scratch, &zero);
		if (s) {
			fill_event(s, sock->tgid, sock->gen, sock->fd, 0, PSC_HTTP_CLOSE, &sock->conn, 0);
			emit_for(s, 0, &sock->conn);
		}
		if (sock->conn.tls) {
			struct psc_conn_key key = { .tgid = sock->tgid, .fd = sock->fd };

			bpf_map_delete_elem(&tls_conns, &key);
		}
	}
	return 0;
}

/* A read (ingress) or write (egress) of `ret` bytes on a socket, from inside its syscall. */
/* A read or write of `ret` bytes on `sk`. Bytes received come either from
 * sock_recv_length, after the read, with the reader's buffer in its registers, or from
 * skb_copy_datagram_iovec, as `ret` bytes of `skb` are copied to the reader. */
static __always_inline int socket_io(struct sock *sk, const struct sk_buff *skb, int ret,
				     int flags, int ingress)
{
	struct task_struct *task;
	struct psc_ssl_call *call;
	struct psc_sock *sock;
	struct pt_regs *regs;
	struct scratch *s;
	__u32 tgid, fd, zero = 0, captured = 0, skip = 0;
	int nr, in_kernel, request, pending = 0;
	__u64 arg = 0, count = 0, who;
	__u32 skb_off = 0;
	__u16 gen;

	if (ret <= 0)
		return 0;
	sock = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!sock) {
		/* Established before the probe attached (or a client's, with clients off):
		 * adopted here, its role told by its first bytes. */
		__u16 family = sk->__sk_common.skc_family;

		if (sk->sk_protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) ||
		    sk->__sk_common.skc_state != TCP_ESTABLISHED)
			return 0;
		sock = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!sock)
			return 0;
	}
	if (sock->verdict == PSC_VERDICT_OTHER)
		return 0;
	/* A peek is read again for real: counting it would count its bytes twice. */
	if (ingress && (flags & MSG_PEEK))
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & PF_KTHREAD)
		return 0; /* in-kernel users of sockets */
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	nr = regs->orig_ax;
	fd = regs->di;
	tgid = task->tgid;
	if (skb) {
		struct tcp_sock *tp = bpf_core_cast(sk, struct tcp_sock);
		struct tcp_skb_cb *cb = bpf_core_cast((void *)skb->cb, struct tcp_skb_cb);
		__u32 seq = tp->copied_seq;

		/* An io_uring peek does not tell itself: it copies without moving copied_seq,
		 * so what it showed is not seen again when read, and its later chunks (at
		 * offsets this cannot tell) not at all until read. */
		if (sock->rcv_seen && (__s32)(seq - sock->rcv_next) < 0)
			return 0;
		sock->rcv_next = seq + ret;
		sock->rcv_seen = 1;
		skb_off = seq - cb->seq;
		/* io_uring reads name no fd: the one the socket was announced with, or one
		 * drawn for it. */
		if (sock->announced && sock->tgid == tgid)
			fd = sock->fd;
		else
			fd = PSC_FD_UNKNOWN | (bpf_get_prandom_u32() & (PSC_FD_UNKNOWN - 1));
		nr = NR_READ;
	} else {
		if (task->flags & PF_IO_WORKER)
			return 0; /* io_uring workers: no syscall to read */
		arg = regs->si;
		count = regs->dx;
	}
	switch (nr) {
	case NR_READ: case NR_READV: case NR_RECVFROM: case NR_RECVMSG:
		if (!ingress)
			return 0;
		break;
	case NR_WRITE: case NR_WRITEV: case NR_SENDTO: case NR_SENDMSG: case NR_SENDFILE:
		if (ingress)
			return 0;
		break;
	case NR_SPLICE:
		if (ingress)
			return 0;
		fd = count; /* splice(fd_in, off_in, fd_out, ...) */
		break;
	default:
		return 0; /* recvmmsg, sendmmsg, compat calls: not traced */
	}
	if (tgid == agent_tgid)
		return 0;
	gen = psc_generation(task);

	/* Inside an OpenSSL call: this socket carries that SSL object's records. A socket
	 * that opened with plaintext HTTP or Redis does not turn to TLS, so the lookup is
	 * spared on the hot path. */
	call = framed_verdict(sock->verdict) || !sock->conn.role
		       ? 0
		       : bpf_task_storage_get(&ssl_calls, task, 0, 0);
	if (call && call->active) {
		struct psc_ssl_key key = { .tgid = tgid, .ssl = call->ssl };

		call->fd = fd;
		bpf_map_update_elem(&ssl_fds, &key, &fd, BPF_ANY);
		if (!sock->conn.tls || !sock->announced || sock->tgid != tgid || sock->gen != gen ||
		    sock->fd != fd) {
			struct psc_conn_key conn_key = { .tgid = tgid, .fd = fd };

			sock->conn.tls = 1;
			announce(sock, tgid, gen, fd);
			/* After the announcement: a lost one marks the connection, so that its
			 * first TLS event tells user space to drop what it knew of this fd. */
			if (bpf_map_update_elem(&tls_conns, &conn_key, &sock->conn, BPF_ANY))
				PSC_COUNT_IN(counters, PSC_HTTP_CONNS_REFUSED);
		}
		return 0;
	}
	if (sock->conn.tls || sock->verdict == PSC_VERDICT_TLS)
		return 0; /* encrypted bytes: the uprobes report the plaintext */

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	/* A connection first seen through io_uring keeps the fd it was announced with. */
	if ((sock->fd & PSC_FD_UNKNOWN) && sock->announced && sock->tgid == tgid)
		fd = sock->fd;
	who = (__u64)tgid << 32 | fd;
	in_kernel = kernel_framing && sock->turn.framing == PSC_FRAMED_IN_KERNEL;
	if (in_kernel && framed_verdict(sock->verdict)) {
		request = ingress == (sock->conn.role == PSC_ROLE_SERVER);
		/* The hot path: bytes within a turn are only counted. */
		if (!opens_turn(&sock->turn, request, ret)) {
			int more = psc_frame_more(sock, ret, request, who, gen);

			if (more < 0)
				return 0;
			skip = more;
			pending = 1;
			goto hand_over;
		}
	}
	captured = skb ? capture_skb(s, skb, skb_off, ret, in_kernel ? PSC_HTTP_SCAN : PSC_HTTP_CAPTURE)
		       : capture(s, nr, arg, count, ret, in_kernel ? PSC_HTTP_SCAN : PSC_HTTP_CAPTURE);
	if (sock->verdict == PSC_VERDICT_POSTGRES_ENCRYPTED) {
		/* The server's one-byte answer to an SSL or GSS request: 'N' goes on in
		 * plaintext, framed here; 'S' is TLS, whose plaintext the uprobes report. */
		if (ingress != (sock->conn.role == PSC_ROLE_SERVER))
			sock->verdict = ret == 1 && captured == 1 && s->data[0] == 'N'
					? PSC_VERDICT_POSTGRES
					: PSC_VERDICT_TLS;
		return 0;
	}
	if (sock->verdict == PSC_VERDICT_UNKNOWN) {
		/* Requests flow in on a server's connections and out on a client's. */
		__u8 verdict = PSC_VERDICT_OTHER;

		if (!sock->conn.role) {
			/* Adopted: a request read makes it a server's, one written a client's. */
			__u8 role = ingress ? PSC_ROLE_SERVER : PSC_ROLE_CLIENT;
			__u8 seen = 0, said = request_verdict(s->data, captured, &seen);

			if (framed_verdict(said) && (ingress || trace_clients) &&
			    set_role(&sock->conn, sk, role)) {
				verdict = said;
				if (role == PSC_ROLE_SERVER)
					psc_learn_caller(sock);
			}
		} else if (ingress == (sock->conn.role == PSC_ROLE_SERVER)) {
			verdict = request_verdict(s->data, captured, &sock->method_seen);
		} else {
			/* A server that speaks first: of no protocol looked for, unless it
			 * greets as MySQL. */
			__u8 split = sock->greeting_split;

			verdict = mysql_verdict(s->data, captured, &sock->greeting_split);
			/* The greeting offers capabilities its answers are read by. */
			if (verdict == PSC_VERDICT_MYSQL && in_kernel) {
				sock->verdict = verdict;
				sock->conn.protocol = PSC_PROTO_MYSQL;
				psc_mysql_greeting(sock, split ? 0 : 4, captured);
				return 0;
			}
		}
		/* Only lookups are measured: a DNS server's side is not. */
		if (verdict == PSC_VERDICT_DNS && sock->conn.role != PSC_ROLE_CLIENT)
			verdict = PSC_VERDICT_OTHER;
		sock->verdict = verdict;
		if (verdict == PSC_VERDICT_REDIS)
			sock->conn.protocol = PSC_PROTO_REDIS;
		else if (verdict == PSC_VERDICT_POSTGRES || verdict == PSC_VERDICT_POSTGRES_ENCRYPTED)
			sock->conn.protocol = PSC_PROTO_POSTGRES;
		else if (verdict == PSC_VERDICT_MYSQL)
			sock->conn.protocol = PSC_PROTO_MYSQL;
		else if (verdict == PSC_VERDICT_DNS)
			sock->conn.protocol = PSC_PROTO_DNS;
		/* A greeting's header alone goes nowhere: the greeting is read from its
		 * payload. */
		if (verdict == PSC_VERDICT_OTHER || verdict == PSC_VERDICT_TLS ||
		    verdict == PSC_VERDICT_POSTGRES_ENCRYPTED || sock->greeting_split)
			return 0;
	}
	if (in_kernel) {
		int outcome = PSC_FRAME_HANDOFF;

		request = ingress == (sock->conn.role == PSC_ROLE_SERVER);
		s->src = !skb && (nr == NR_READ || nr == NR_WRITE || nr == NR_RECVFROM ||
				  nr == NR_SENDTO) ? arg : 0;
		if (!framed_verdict(sock->verdict)) {
			/* A method split over reads, which user space puts together, or DNS
			 * over TCP, which it pairs. */
		} else if (request) {
			outcome = psc_frame_request(sock, captured, ret, who, gen);
		} else {
			int more;

			/* The walks are called from here: through psc_frame_response, the three
			 * frames' stacks would pass the verifier's 512 bytes. */
			if (sock->conn.protocol == PSC_PROTO_POSTGRES)
				more = psc_frame_pg_response(sock, captured, ret, who, gen);
			else if (sock->conn.protocol == PSC_PROTO_MYSQL)
				more = psc_frame_mysql_response(sock, captured, ret, who, gen);
			else
				more = psc_frame_response(sock, captured, ret, who, gen);
			outcome = more < 0 ? PSC_FRAME_KEPT : PSC_FRAME_HANDOFF;
			skip = more < 0 ? 0 : more;
			pending = 1;
		}
		if (outcome == PSC_FRAME_KEPT)
			return 0;
hand_over:
		if (!sock->announced || sock->tgid != tgid || sock->gen != gen || sock->fd != fd)
			announce(sock, tgid, gen, fd);
		psc_frame_hand_off(sock, pending, skip, who, gen);
		/* The record took the scratch: the bytes are captured again, all of them. */
		captured = skb ? capture_skb(s, skb, skb_off, ret, PSC_HTTP_CAPTURE)
			       : capture(s, nr, arg, count, ret, PSC_HTTP_CAPTURE);
	}
	if (!sock->announced || sock->tgid != tgid || sock->gen != gen || sock->fd != fd)
		announce(sock, tgid, gen, fd);
	fill_event(s, tgid, gen, fd, ret, ingress ? PSC_HTTP_READ : PSC_HTTP_WRITE, &sock->conn, 0);
	request = ingress == (sock->conn.role == PSC_ROLE_SERVER);
	/* Messages pipelined past the first capture would go unseen: a burst of them in
	 * one buffer or iovec array is captured whole, up to PSC_HTTP_BURST. For HTTP, the
	 * scan for a second head spares the copy to reads and writes of bodies; the other
	 * protocols' reads hold many small messages (rows, replies). An iovec array's
	 * capture stops a byte short. */
	if (captured >= PSC_HTTP_CAPTURE - 1 && ret > PSC_HTTP_CAPTURE &&
	    (skb || nr == NR_READ || nr == NR_WRITE || nr == NR_RECVFROM || nr == NR_SENDTO ||
	     nr == NR_READV || nr == NR_WRITEV) &&
	    (sock->conn.protocol != PSC_PROTO_HTTP || holds_pipelined(captured, request)) &&
	    !emit_burst(&sock->conn, arg, nr == NR_READV || nr == NR_WRITEV ? count : 0, skb,
			skb_off, ret)) {
		sock->conn.named = 1;
		return 0;
	}
	emit_for(s, captured, &sock->conn);
	sock->conn.named = 1;
	return 0;
}

/* The entry of sendmmsg(2)'s array being sent now: the first whose msg_len the kernel
 * has not written yet (it writes each after sending it). Callers zero the array, as
 * glibc's resolver does when it sends its A and AAAA queries together. */
static __always_inline __u64 sendmmsg_entry(__u64 vec, __u64 vlen)
{
	for (int i = 0; i < 4; i++) {
		__u64 entry = vec + i * sizeof(struct mmsghdr);
		__u32 sent;

		if (i >= vlen || bpf_probe_read_user(&sent, sizeof(sent),
						     (void *)(entry + offsetof(struct mmsghdr, msg_len))))
			return 0;
		if (!sent)
			return entry;
	}
	return 0;
}

/* The address a datagram is sent to, from sendto's or sendmsg's `name` argument. */
static __always_inline void sent_to(struct psc_peer *peer, __u64 name)
{
	struct sockaddr_in6 sa = {};

	if (!name || bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), (void *)name))
		return;
	if (sa.sin6_family == AF_INET6 && bpf_probe_read_user(&sa, sizeof(sa), (void *)name))
		return;
	if (sa.sin6_family != AF_INET && sa.sin6_family != AF_INET6)
		return;
	__builtin_memset(peer, 0, sizeof(*peer));
	peer->family = sa.sin6_family;
	peer->port = bpf_ntohs(sa.sin6_port);
	if (sa.sin6_family == AF_INET)
		__builtin_memcpy(peer->addr, &((struct sockaddr_in *)&sa)->sin_addr, 4);
	else
		__builtin_memcpy(peer->addr, &sa.sin6_addr, 16);
}

/*
 * A datagram sent or received on a UDP socket: DNS lookups. A socket's first datagram
 * sent tells whether it is a DNS client's; any other costs one storage lookup per send
 * or receive after that, and receives on a socket that never sent cost one lookup. The
 * kernel pairs a query with its answer (psc_dns_pair); what it cannot pair goes to user
 * space whole, which pairs it by id and question.
 */
/* DNS lookups over UDP in flight, by process, fd and id: the kernel pairs each answer
 * with its query and counts the lookup in its series slot, as it counts framed
 * exchanges. User space sweeps out those unanswered past the timeout. Full, a query
 * goes to user space, which pairs it as it pairs those over TCP. */
PSC_HASH(dns_pending, struct psc_dns_pending_key, struct psc_dns_pending, 4096);

struct dns_name_walk {
	const struct scratch *s;
	__u32 at; /* the next label's length byte */
	__u32 ended; /* 1 at the name's final 0, 2 on a malformed or too long name */
};

static long dns_name_label(__u64 i, void *ctx)
{
	struct dns_name_walk *w = ctx;
	__u8 label = w->s->data[w->at & PSC_SCAN_MASK];

	if (!label) {
		w->ended = 1;
		return 1;
	}
	w->at += 1 + label;
	if (label > 63 || w->at - 12 >= PSC_HTTP_LINE - PSC_DNS_NAME_AT) {
		w->ended = 2;
		return 1;
	}
	return 0;
}

/* The question of the DNS message in the scratch (`captured` bytes): its type and name
 * go to `line`. Returns the line's length, or 0 when the name is malformed or does not
 * fit the line. The walk is a loop the verifier checks once, not once per label. */
static __always_inline __u32 dns_question(const struct scratch *s, __u32 captured, char *line)
{
	struct dns_name_walk w = { .s = s, .at = 12 };
	__u32 at, name_len;

	bpf_loop(64, dns_name_label, &w, 0);
	at = w.at;
	if (w.ended != 1 || at + 3 > captured || at + 1 - 12 > PSC_HTTP_LINE - PSC_DNS_NAME_AT)
		return 0;
	/* The verifier learns nothing from the loop: bound what it walked to, in a way the
	 * compiler, which knows the check above, cannot drop. */
	barrier_var(at);
	at &= 0xff;
	name_len = (at + 1 - 12) & (PSC_HTTP_LINE - 1);
	__builtin_memset(line, 0, PSC_HTTP_LINE);
	line[0] = s->data[at + 1];
	line[1] = s->data[at + 2];
	if (!name_len || name_len > PSC_HTTP_LINE - PSC_DNS_NAME_AT)
		return 0;
	bpf_probe_read_kernel(line + PSC_DNS_NAME_AT, name_len, s->data + 12);
	return PSC_DNS_NAME_AT + name_len;
}

static __always_inline int same_line(const char *a, const char *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	for (int i = 0; i < PSC_HTTP_LINE / 8; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* Pairs a DNS message over UDP in the kernel: a query sent starts a lookup, the answer
 * received to it ends and counts it. Returns 1 when it did, 0 when the message goes to
 * user space (a question too long for a line, a full map, a lookup sampled for a span,
 * an answer to no lookup paired here). `who` is the tgid and fd, `how` the process's
 * generation and, in bit 16, whether the message was received. Global, so that the
 * verifier checks it once. */
__noinline int psc_dns_pair(struct psc_sock *sock, __u32 captured, __u64 who, __u32 how)
{
	struct psc_dns_pending_key key = { .tgid = who >> 32, .fd = (__u32)who, .gen = (__u16)how };
	struct psc_dns_pending *lookup, *pending;
	struct io io = io_of(who, (__u16)how);
	struct scratch *s = this_scratch();
	struct psc_turn *t;
	__u32 line_len;
	__u64 now, *sent;

	if (!s || !sock || captured < 12)
		return 0;
	lookup = &s->lookup;
	key.id = (__u8)s->data[0] << 8 | (__u8)s->data[1];
	line_len = dns_question(s, captured, lookup->line);
	if (!(how >> 16)) {
		now = bpf_ktime_get_ns();
		/* A lookup a span is made of goes to user space, which makes it. */
		if (span_sampling && span_sampled(PSC_ROLE_CLIENT, 0, now))
			return 0;
		if (!line_len) {
			PSC_COUNT_IN(counters, PSC_HTTP_DNS_UNPAIRED);
			return 0;
		}
		lookup->start_ns = now;
		lookup->tgid = io.tgid;
		lookup->fd = io.fd;
		lookup->tid = (__u32)bpf_get_current_pid_tgid();
		lookup->gen = io.gen;
		lookup->line_len = line_len;
		lookup->server = sock->conn.server;
		/* A retry of the same question keeps the lookup's first start. */
		pending = bpf_map_lookup_elem(&dns_pending, &key);
		if (pending && pending->line_len == line_len && same_line(pending->line, lookup->line))
			return 1;
		if (bpf_map_update_elem(&dns_pending, &key, lookup, BPF_ANY)) {
			PSC_COUNT_IN(counters, PSC_HTTP_DNS_UNPAIRED);
			return 0;
		}
		return 1;
	}
	pending = bpf_map_lookup_elem(&dns_pending, &key);
	if (!pending)
		return 0;
	/* An answer to another question answers nothing. */
	if (!line_len || pending->line_len != line_len || !same_line(pending->line, lookup->line))
		return 1;
	sent = (__u64 *)pending->line;
	t = &sock->turn;
	t->key.tgid = pending->tgid;
	t->key.gen = pending->gen;
	t->key.role = PSC_ROLE_CLIENT;
	t->key.method = 0;
	t->key.status = s->data[3] & 0xf; /* the response code */
	t->key.protocol = PSC_PROTO_DNS;
	t->key.port = pending->server.port;
	t->key.family = pending->server.family;
	__builtin_memcpy(t->key.addr, pending->server.addr, sizeof(t->key.addr));
	t->key.path_hash = 14695981039346656037ULL;
	for (int i = 0; i < PSC_HTTP_LINE / 8; i++)
		t->key.path_hash = (t->key.path_hash ^ sent[i]) * PSC_FNV_PRIME;
	t->start_ns = pending->start_ns;
	t->tid = pending->tid;
	t->sampled = 0;
	t->request_head = t->request_length = 0;
	t->response_head = t->response_length = 0;
	t->line_len = line_len;
	__builtin_memcpy(t->line, pending->line, PSC_HTTP_LINE);
	sock->conn.server = pending->server;
	io.tgid = pending->tgid;
	io.fd = pending->fd;
	io.gen = pending->gen;
	if (bpf_map_delete_elem(&dns_pending, &key))
		return 1; /* user space took it as a timeout meanwhile */
	finish(s, sock, &io);
	return 1;
}

static __always_inline int udp_io(struct sock *sk, int ret, int flags, int ingress)
{
	struct task_struct *task;
	struct psc_sock *sock;
	struct pt_regs *regs;
	struct scratch *s;
	__u32 tgid, fd, zero = 0, captured;
	__u64 arg, count, name = 0;
	int nr;

	if (ret <= 0 || !(protocols & PSC_PROTO_BIT(PSC_PROTO_DNS)) || !trace_clients)
		return 0;
	sock = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (sock ? sock->verdict == PSC_VERDICT_OTHER : ingress)
		return 0;
	if (ingress && (flags & MSG_PEEK))
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & (PF_KTHREAD | PF_IO_WORKER))
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	tgid = task->tgid;
	if (tgid == agent_tgid)
		return 0;
	nr = regs->orig_ax;
	fd = regs->di;
	arg = regs->si;
	count = regs->dx;
	switch (nr) {
	case NR_READ: case NR_RECVFROM: case NR_RECVMSG:
		if (!ingress)
			return 0;
		break;
	case NR_WRITE:
		break;
	case NR_SENDTO:
		name = regs->r8;
		break;
	case NR_SENDMMSG:
		arg = sendmmsg_entry(arg, count);
		if (!arg)
			return 0;
		nr = NR_SENDMSG;
		/* fall through */
	case NR_SENDMSG: {
		struct user_msghdr msg = {};

		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)arg))
			return 0;
		name = (__u64)msg.msg_name;
		break;
	}
	default:
		return 0;
	}
	if (ingress != (nr == NR_READ || nr == NR_RECVFROM || nr == NR_RECVMSG))
		return 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	captured = capture(s, nr, arg, count, ret, PSC_DNS_CAPTURE);
	if (!dns_shaped(s->data, captured, ingress)) {
		/* Not a query: a socket that never sent one is looked at no more. */
		if (!sock && !ingress) {
			sock = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (sock)
				sock->verdict = PSC_VERDICT_OTHER;
		}
		return 0;
	}
	if (!sock) {
		sock = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!sock)
			return 0;
		sock->verdict = PSC_VERDICT_DNS;
		sock->conn.protocol = PSC_PROTO_DNS;
		sock->conn.role = PSC_ROLE_CLIENT;
	}
	/* Where a query goes: its connected peer, or the address it was sent to. */
	if (!ingress && !set_role(&sock->conn, sk, PSC_ROLE_CLIENT))
		return 0;
	if (!ingress && !sk->__sk_common.skc_dport)
		sent_to(&sock->conn.server, name);
	if (kernel_framing &&
	    psc_dns_pair(sock, captured, (__u64)tgid << 32 | fd,
			 psc_generation(task) | (__u32)ingress << 16))
		return 0;
	fill_event(s, tgid, psc_generation(task), fd, ret, ingress ? PSC_HTTP_READ : PSC_HTTP_WRITE,
		   &sock->conn, 0);
	s->event.datagram = 1;
	emit_for(s, captured, &sock->conn);
	sock->conn.named = 1;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(psc_http_recv, struct sock *sk, int ret, int flags)
{
	if (sk->sk_protocol == IPPROTO_UDP)
		return udp_io(sk, ret, flags, 1);
	return socket_io(sk, 0, ret, flags, 1);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(psc_http_send, struct sock *sk, int ret, int flags)
{
	if (sk->sk_protocol == IPPROTO_UDP)
		return udp_io(sk, ret, flags, 0);
	return socket_io(sk, 0, ret, flags, 0);
}

/* Received bytes as they are copied to the reader, from the skb, for reads that name no
 * read syscall: io_uring's. Reads by syscall are psc_http_recv's, whose path costs
 * less here (436 against 605 ns per read, BENCHMARKS.md). */
SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(psc_http_copy, const struct sk_buff *skb, int len)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct sock *sk;

	if (!(task->flags & PF_IO_WORKER)) {
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		long nr;

		if (!regs)
			return 0;
		nr = regs->orig_ax;
		if (nr == NR_READ || nr == NR_READV || nr == NR_RECVFROM || nr == NR_RECVMSG)
			return 0;
	}
	sk = skb->sk;
	if (!sk)
		return 0;
	return socket_io(sk, skb, len, 0, 1);
}

/* OpenSSL: SSL_read/SSL_write(_ex) give the plaintext of TLS connections. */

/* Bytes copied from user memory at a time, on the stack. */
#define PSC_TLS_CHUNK 256

/* Emits a TLS read or write with the first `want` plaintext bytes at `buf`, assembled
 * in its own ring buffer record. Uprobes run preemptible (Linux 6.13 on), so another
 * task on this CPU may run between any two instructions here: the per-CPU scratch the
 * socket hooks use could be overwritten midway, and a reserved record cannot. Returns 0
 * when the event is in the ring buffer. */
static __always_inline int emit_tls(struct psc_conn *conn, __u32 tgid, __u32 fd, __u64 len,
				    __u8 kind, const void *buf, __u32 want)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct psc_http_event event = {};
	char chunk[PSC_TLS_CHUNK];
	struct bpf_dynptr record;
	__u32 captured = 0;

	if (want > PSC_HTTP_CAPTURE)
		want = PSC_HTTP_CAPTURE;
	if (bpf_ringbuf_reserve_dynptr(&events, sizeof(event) + want, 0, &record)) {
		bpf_ringbuf_discard_dynptr(&record, 0);
		PSC_COUNT_IN(counters, PSC_HTTP_LOST_EVENTS);
		return -1;
	}
	for (int i = 0; i < PSC_HTTP_CAPTURE / PSC_TLS_CHUNK; i++) {
		__u32 n = want - captured;

		if (captured >= want)
			break;
		if (n > PSC_TLS_CHUNK)
			n = PSC_TLS_CHUNK;
		if (bpf_probe_read_user(chunk, n, buf + captured))
			break;
		if (bpf_dynptr_write(&record, sizeof(event) + captured, chunk, n, 0))
			break;
		captured += n;
	}
	event.ts = bpf_ktime_get_ns();
	event.tgid = tgid;
	event.gen = psc_generation(task);
	event.tid = (__u32)bpf_get_current_pid_tgid();
	event.fd = fd;
	event.len = len;
	event.kind = kind;
	event.role = conn->role;
	event.protocol = conn->protocol;
	event.tls = 1;
	event.gap = conn->lost;
	event.server = conn->server;
	event.client = conn->client;
	event.captured = captured;
	bpf_probe_read_kernel_str(event.comm, sizeof(event.comm), task->group_leader->comm);
	bpf_dynptr_write(&record, 0, &event, sizeof(event), 0);
	/* No wakeup, as for the other events. */
	bpf_ringbuf_submit_dynptr(&record, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline int ssl_enter(void *ssl, void *buf, void *done_ptr, __u8 write)
{
	struct psc_ssl_key sk = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)ssl };
	struct psc_ssl_call *call;
	__u32 *fd;

	call = bpf_task_storage_get(&ssl_calls, bpf_get_current_task_btf(), 0,
				    BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call)
		return 0;
	call->ssl = (__u64)ssl;
	call->buf = (__u64)buf;
	call->done_ptr = (__u64)done_ptr;
	call->write = write;
	call->active = 1;
	fd = bpf_map_lookup_elem(&ssl_fds, &sk);
	call->fd = fd ? *fd : (__u32)-1;
	return 0;
}

static __always_inline int ssl_exit(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct psc_ssl_call *call;
	struct psc_conn_key key;
	struct psc_conn *conn;
	__u32 want;
	__u64 len = 0;

	call = bpf_task_storage_get(&ssl_calls, bpf_get_current_task_btf(), 0, 0);
	if (!call || !call->active)
		return 0;
	call->active = 0;
	if (call->done_ptr) {
		size_t done = 0;

		if (ret != 1 || bpf_probe_read_user(&done, sizeof(done), (void *)call->done_ptr))
			return 0;
		len = done;
	} else {
		if (ret <= 0)
			return 0;
		len = ret;
	}
	if (call->fd == (__u32)-1) {
		PSC_COUNT_IN(counters, PSC_HTTP_TLS_NO_FD);
		return 0;
	}
	key.tgid = tgid;
	key.fd = call->fd;
	conn = bpf_map_lookup_elem(&tls_conns, &key);
	if (!conn)
		return 0;
	conn->tls = 1;
	want = len > PSC_HTTP_CAPTURE ? PSC_HTTP_CAPTURE : len;
	conn->lost = emit_tls(conn, tgid, key.fd, len, call->write ? PSC_HTTP_WRITE : PSC_HTTP_READ,
			      (const void *)call->buf, want) ?
			     1 :
			     0;
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(psc_ssl_read, void *ssl, void *buf, int num)
{
	return ssl_enter(ssl, buf, 0, 0);
}

SEC("uprobe")
int BPF_UPROBE(psc_ssl_write, void *ssl, const void *buf, int num)
{
	return ssl_enter(ssl, (void *)buf, 0, 1);
}

SEC("uprobe")
int BPF_UPROBE(psc_ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return ssl_enter(ssl, buf, readbytes, 0);
}

SEC("uprobe")
int BPF_UPROBE(psc_ssl_write_ex, void *ssl, const void *buf, size_t num, size_t *written)
{
	return ssl_enter(ssl, (void *)buf, written, 1);
}

SEC("uretprobe")
int BPF_URETPROBE(psc_ssl_ret, int ret)
{
	return ssl_exit(ret);
}

SEC("uprobe")
int BPF_UPROBE(psc_ssl_set_fd, void *ssl, int fd)
{
	struct psc_ssl_key sk = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)ssl };
	__u32 value = fd;

	bpf_map_update_elem(&ssl_fds, &sk, &value, BPF_ANY);
	return 0;
}

/* A new program: it may map a libssl no uprobe covers yet (a container's own copy). */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(psc_http_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct psc_conn none = {};
	struct scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	fill_event(s, bpf_get_current_pid_tgid() >> 32, psc_generation(bpf_get_current_task_btf()), 0,
		   0, PSC_HTTP_EXEC, &none, 0);
	emit(s, 0, 1);
	return 0;
}
