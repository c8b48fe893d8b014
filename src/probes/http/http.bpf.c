/*
 * http: the bytes of HTTP/1.x connections, seen where sockets send and receive.
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
 * bytes are not HTTP costs one storage lookup per read or write after that.
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
/* The agent's own process: its scrapes and exports are not traced, or exporting a span
 * would make another. */
const volatile __u32 agent_tgid = 0;

/* Named here so that the skeleton gives user space these types, event kinds, roles
 * and counter slots. */
PSC_EXPORT_TYPES(struct psc_conn_key, struct psc_conn, struct psc_http_event,
		 enum psc_http_event_kind, enum psc_http_role, enum psc_http_counter);

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

#define AF_INET 2
#define AF_INET6 10
#define MSG_PEEK 2
#define PF_KTHREAD 0x00200000
#define PF_IO_WORKER 0x00000010

/* What a connection's first bytes said. */
enum psc_http_verdict {
	PSC_VERDICT_UNKNOWN = 0,
	PSC_VERDICT_HTTP = 1,
	PSC_VERDICT_OTHER = 2, /* not HTTP/1.x: never looked at again */
	PSC_VERDICT_TLS = 3,   /* a TLS handshake: the uprobes may report the plaintext */
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
	__u16 pad2;
};

PSC_SK_STORAGE(socks, struct psc_sock);

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
	char data[2 * PSC_HTTP_CAPTURE];
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

/* Copies up to PSC_HTTP_CAPTURE bytes of the first `len` bytes of an iovec array. */
static __always_inline __u32 capture_iov(struct scratch *s, const struct iovec *iov, __u64 iovcnt, __u64 len)
{
	__u64 off = 0;

	for (int i = 0; i < 8; i++) {
		struct iovec seg = {};
		__u64 want;

		if (i >= iovcnt || off >= PSC_HTTP_CAPTURE - 1 || off >= len)
			break;
		if (bpf_probe_read_user(&seg, sizeof(seg), &iov[i]))
			break;
		want = seg.iov_len;
		if (want > len - off)
			want = len - off;
		/* One byte short of the capture size, so that the masks below never cut. */
		if (want > PSC_HTTP_CAPTURE - 1 - off)
			want = PSC_HTTP_CAPTURE - 1 - off;
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
		return PSC_VERDICT_TLS;
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

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(psc_http_state, const struct sock *sk, int oldstate, int newstate)
{
	struct psc_sock *sock;

	if (newstate == TCP_ESTABLISHED) {
		struct psc_sock fresh = {};
		__u8 role;

		if (oldstate == TCP_SYN_RECV)
			role = PSC_ROLE_SERVER;
		else if (oldstate == TCP_SYN_SENT && trace_clients)
			role = PSC_ROLE_CLIENT;
		else
			return 0;
		if (!set_role(&fresh.conn, sk, role))
			return 0;
		sock = bpf_sk_storage_get(&socks, (void *)sk, &fresh, BPF_SK_STORAGE_GET_F_CREATE);
		if (!sock)
			PSC_COUNT_IN(counters, PSC_HTTP_CONNS_REFUSED);
		return 0;
	}
	/* The local side closed (FIN_WAIT1, LAST_ACK) or the connection died (CLOSE): no
	 * more requests or responses. A peer's FIN alone (CLOSE_WAIT) is not the end: a
	 * server may still answer a client that half-closed. */
	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	sock = bpf_sk_storage_get(&socks, (void *)sk, 0, 0);
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
static __always_inline int socket_io(struct sock *sk, int ret, int flags, int ingress)
{
	struct task_struct *task;
	struct psc_ssl_call *call;
	struct psc_sock *sock;
	struct pt_regs *regs;
	struct scratch *s;
	__u32 tgid, fd, zero = 0, captured = 0;
	__u16 gen;
	__u64 arg, count;
	int nr;

	if (ret <= 0)
		return 0;
	sock = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!sock) {
		/* Established before the probe attached (or a client's, with clients off):
		 * adopted here, its role told by its first bytes. */
		struct psc_sock fresh = {};
		__u16 family = sk->__sk_common.skc_family;

		if (sk->sk_protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) ||
		    sk->__sk_common.skc_state != TCP_ESTABLISHED)
			return 0;
		sock = bpf_sk_storage_get(&socks, sk, &fresh, BPF_SK_STORAGE_GET_F_CREATE);
		if (!sock)
			return 0;
	}
	if (sock->verdict == PSC_VERDICT_OTHER)
		return 0;
	/* A peek is read again for real: counting it would count its bytes twice. */
	if (ingress && (flags & MSG_PEEK))
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & (PF_KTHREAD | PF_IO_WORKER))
		return 0; /* in-kernel users and io_uring workers: no syscall to read */
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	nr = regs->orig_ax;
	fd = regs->di;
	arg = regs->si;
	count = regs->dx;
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
	tgid = task->tgid;
	if (tgid == agent_tgid)
		return 0;
	gen = psc_generation(task);

	/* Inside an OpenSSL call: this socket carries that SSL object's records. A socket
	 * that opened with plaintext HTTP does not turn to TLS, so the lookup is spared
	 * on the hot path. */
	call = sock->verdict == PSC_VERDICT_HTTP || !sock->conn.role
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
	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_RECVFROM: case NR_SENDTO: {
		__u32 want = ret > PSC_HTTP_CAPTURE ? PSC_HTTP_CAPTURE : ret;

		if (!bpf_probe_read_user(s->data, want, (void *)arg))
			captured = want;
		break;
	}
	case NR_READV: case NR_WRITEV:
		captured = capture_iov(s, (const struct iovec *)arg, count, ret);
		break;
	case NR_RECVMSG: case NR_SENDMSG: {
		struct user_msghdr msg = {};

		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)arg))
			captured = capture_iov(s, msg.msg_iov, msg.msg_iovlen, ret);
		break;
	}
	default: /* sendfile, splice: file bytes, counted by length */
		break;
	}
	if (sock->verdict == PSC_VERDICT_UNKNOWN) {
		/* Requests flow in on a server's connections and out on a client's. */
		__u8 verdict = PSC_VERDICT_OTHER;

		if (!sock->conn.role) {
			/* Adopted: a request read makes it a server's, one written a client's. */
			__u8 role = ingress ? PSC_ROLE_SERVER : PSC_ROLE_CLIENT;
			__u8 seen = 0;

			if (request_verdict(s->data, captured, &seen) == PSC_VERDICT_HTTP &&
			    (ingress || trace_clients) && set_role(&sock->conn, sk, role))
				verdict = PSC_VERDICT_HTTP;
		} else if (ingress == (sock->conn.role == PSC_ROLE_SERVER)) {
			verdict = request_verdict(s->data, captured, &sock->method_seen);
		}
		sock->verdict = verdict;
		if (verdict == PSC_VERDICT_OTHER || verdict == PSC_VERDICT_TLS)
			return 0;
	}
	if (!sock->announced || sock->tgid != tgid || sock->gen != gen || sock->fd != fd)
		announce(sock, tgid, gen, fd);
	fill_event(s, tgid, gen, fd, ret, ingress ? PSC_HTTP_READ : PSC_HTTP_WRITE, &sock->conn, 0);
	emit_for(s, captured, &sock->conn);
	sock->conn.named = 1;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(psc_http_recv, struct sock *sk, int ret, int flags)
{
	return socket_io(sk, ret, flags, 1);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(psc_http_send, struct sock *sk, int ret, int flags)
{
	return socket_io(sk, ret, flags, 0);
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
