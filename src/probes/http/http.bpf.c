/*
 * http: the bytes of HTTP/1.x connections, seen at the syscall layer.
 *
 * Connections are tracked per (process, fd) from accept (server side) and connect
 * (client side) until close. Reads and writes on tracked connections hand their length
 * and a captured prefix to user space over a ring buffer, where they are framed into
 * requests and responses. Syscalls on other descriptors cost one hash lookup.
 * Hooks are the per-syscall tracepoints of the syscalls involved, so no other
 * syscall pays for them.
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

struct psc_conn_key psc_conn_key_type = {};
struct psc_conn psc_conn_type = {};
struct psc_http_event psc_http_event_type = {};

/* x86_64 syscall numbers. */
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDFILE 40
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_ACCEPT4 288

#define AF_INET 2
#define AF_INET6 10
#define MSG_PEEK 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct psc_conn_key);
	__type(value, struct psc_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct psc_http_pending);
} pending SEC(".maps");

/* The OpenSSL call in flight on each thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct psc_ssl_call);
} ssl_calls SEC(".maps");

/* The socket of each SSL object, from SSL_set_fd or a syscall made inside a call.
 * LRU: SSL objects are freed without notice; an evicted one is learned again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct psc_ssl_key);
	__type(value, __u32);
} ssl_fds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* An event and its bytes, assembled here because it is too large for the stack. Twice
 * the capture size, so that the verifier can bound writes at any offset below it. */
struct scratch {
	struct psc_http_event event;
	char data[2 * PSC_HTTP_CAPTURE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PSC_HTTP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The record of syscalls/sys_enter_<name> and sys_exit_<name> (see their tracefs format). */
struct enter_record {
	__u64 common;
	int nr;
	int pad;
	__u64 args[6];
};

struct exit_record {
	__u64 common;
	int nr;
	int pad;
	long ret;
};


/* The local port of the socket behind `fd` of the current process, 0 if unknown. */
static __always_inline __u16 local_port(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	struct file *file;
	struct socket *sock;

	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd & 0xfffff]))
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	return BPF_CORE_READ(sock, sk, __sk_common.skc_num);
}

/* Port and address of a sockaddr in user memory; left zero unless IPv4 or IPv6. */
static __always_inline void sockaddr_peer(const void *addr, struct psc_peer *peer)
{
	struct {
		__u16 family;
		__u16 port;
		__u32 v4_or_flowinfo;
		__u8 v6[16];
	} sa = {};

	if (!addr || bpf_probe_read_user(&sa, sizeof(sa), addr))
		return;
	if (sa.family == AF_INET) {
		peer->family = AF_INET;
		__builtin_memcpy(peer->addr, &sa.v4_or_flowinfo, 4);
	} else if (sa.family == AF_INET6) {
		peer->family = AF_INET6;
		__builtin_memcpy(peer->addr, sa.v6, 16);
	} else {
		return;
	}
	peer->port = bpf_ntohs(sa.port);
}

static __always_inline void fill_event(struct scratch *s, __u32 tgid, __u32 fd, __u64 len,
				       __u8 kind, struct psc_conn *conn, __u8 tls)
{
	s->event.ts = bpf_ktime_get_ns();
	s->event.tgid = tgid;
	s->event.fd = fd;
	s->event.len = len;
	s->event.kind = kind;
	s->event.role = conn->role;
	s->event.tls = tls;
	s->event.server = conn->server;
}

static __always_inline int is_data_syscall(int nr)
{
	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_READV: case NR_WRITEV: case NR_SENDFILE:
	case NR_SENDTO: case NR_RECVFROM: case NR_SENDMSG: case NR_RECVMSG:
		return 1;
	}
	return 0;
}

static __always_inline int is_read(int nr)
{
	return nr == NR_READ || nr == NR_READV || nr == NR_RECVFROM || nr == NR_RECVMSG;
}

static __always_inline void emit(struct scratch *s, __u32 captured, int named)
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
	if (bpf_ringbuf_output(&events, s, sizeof(s->event) + captured, BPF_RB_NO_WAKEUP))
		PSC_COUNT_IN(counters, PSC_HTTP_LOST_EVENTS);
}

static __always_inline void track(__u32 tgid, __u32 fd, __u8 role, struct psc_peer *server)
{
	struct psc_conn_key key = { .tgid = tgid, .fd = fd };
	struct psc_conn conn = { .role = role, .server = *server };

	__u32 zero = 0;
	struct scratch *s;

	if (bpf_map_update_elem(&conns, &key, &conn, BPF_ANY)) {
		PSC_COUNT_IN(counters, PSC_HTTP_CONNS_REFUSED);
		return;
	}
	/* Tell user space a connection starts on this fd, whatever it knew of the fd before
	 * (a close it never saw: dup2, close_range, a lost event). */
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (s) {
		fill_event(s, tgid, fd, 0, PSC_HTTP_OPEN, &conn, 0);
		emit(s, 0, 1);
	}
}

/* Copies up to PSC_HTTP_CAPTURE bytes of the first `len` bytes of an iovec array. */
static __always_inline __u32 capture_iov(struct scratch *s, const struct iovec *iov, __u64 iovcnt, __u64 len)
{
	__u64 off = 0;

	for (int i = 0; i < 4; i++) {
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

/* The record of syscalls/sys_enter_close: one argument. A program may not read past the
 * record of every tracepoint it is attached to, hence a program of its own. */
struct close_record {
	__u64 common;
	int nr;
	int pad;
	__u64 fd;
};

SEC("tracepoint")
int psc_http_close(struct close_record *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct psc_conn_key key = { .tgid = tgid, .fd = ctx->fd };
	struct psc_conn *conn = bpf_map_lookup_elem(&conns, &key);
	struct scratch *s;
	__u32 zero = 0;

	if (!conn)
		return 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (s) {
		fill_event(s, tgid, key.fd, 0, PSC_HTTP_CLOSE, conn, 0);
		emit(s, 0, conn->named);
	}
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

static __always_inline int http_enter(struct enter_record *ctx);

SEC("tracepoint")
int psc_http_enter(struct enter_record *ctx)
{
	return http_enter(ctx);
}

/* recvfrom's flags are its fourth argument, past the end of the records of most other
 * syscalls (a program may not read past any record it is attached to). */
SEC("tracepoint")
int psc_http_enter_recvfrom(struct enter_record *ctx)
{
	if (ctx->args[3] & MSG_PEEK)
		return 0;
	return http_enter(ctx);
}

static __always_inline int http_enter(struct enter_record *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct psc_conn_key key = { .tgid = tgid, .fd = ctx->args[0] };
	struct psc_http_pending *p;
	struct psc_conn *conn;
	int nr = ctx->nr;

	if (nr == NR_CONNECT) {
		struct psc_peer server = {};

		if (!trace_clients)
			return 0;
		sockaddr_peer((void *)ctx->args[1], &server);
		track(tgid, key.fd, PSC_ROLE_CLIENT, &server);
		return 0;
	}
	conn = bpf_map_lookup_elem(&conns, &key);
	if (!conn)
		return 0;
	if (!is_data_syscall(nr))
		return 0;
	/* A peek is read again for real: counting it would count its bytes twice. */
	if (nr == NR_RECVMSG && (ctx->args[2] & MSG_PEEK))
		return 0;
	{
		/* Inside an OpenSSL call: this socket carries that SSL object's records. */
		struct psc_ssl_call *call = bpf_task_storage_get(&ssl_calls, bpf_get_current_task_btf(), 0, 0);

		if (call && call->active) {
			struct psc_ssl_key sk = { .tgid = tgid, .ssl = call->ssl };
			__u32 fd = key.fd;

			call->fd = fd;
			bpf_map_update_elem(&ssl_fds, &sk, &fd, BPF_ANY);
			conn->tls = 1;
		}
	}
	if (conn->tls)
		return 0; /* encrypted bytes: the uprobes report the plaintext */
	p = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!p)
		return 0;
	p->nr = nr;
	p->fd = key.fd;
	p->arg = ctx->args[1];
	p->conn = *conn;
	return 0;
}

SEC("tracepoint")
int psc_http_exit(struct exit_record *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct psc_http_pending *p;
	struct psc_conn_key key;
	struct psc_conn *conn;
	struct scratch *s;
	__u32 zero = 0, captured = 0;
	int nr = ctx->nr;
	long ret = ctx->ret;

	if (nr == NR_ACCEPT || nr == NR_ACCEPT4) {
		if (ret >= 0) {
			struct psc_peer server = { .port = local_port(ret) };

			track(tgid, ret, PSC_ROLE_SERVER, &server);
		}
		return 0;
	}
	p = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0, 0);
	if (!p || p->nr != (__u32)nr || (!p->arg && nr != NR_SENDFILE))
		return 0;
	p->nr = (__u32)-1;
	if (ret <= 0)
		return 0;
	key.tgid = tgid;
	key.fd = p->fd;
	conn = &p->conn;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;

	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_RECVFROM: case NR_SENDTO: {
		__u32 want = ret > PSC_HTTP_CAPTURE ? PSC_HTTP_CAPTURE : ret;

		if (!bpf_probe_read_user(s->data, want, (void *)p->arg))
			captured = want;
		break;
	}
	case NR_READV: case NR_WRITEV:
		/* iovcnt is not kept; capture_iov stops at the length moved. */
		captured = capture_iov(s, (const struct iovec *)p->arg, 4, ret);
		break;
	case NR_RECVMSG: case NR_SENDMSG: {
		struct user_msghdr msg = {};

		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)p->arg))
			captured = capture_iov(s, msg.msg_iov, msg.msg_iovlen, ret);
		break;
	}
	default: /* sendfile: file bytes, counted by length */
		break;
	}
	fill_event(s, tgid, key.fd, ret, is_read(nr) ? PSC_HTTP_READ : PSC_HTTP_WRITE, conn, 0);
	emit(s, captured, conn->named);
	if (!conn->named) {
		/* The first event of a connection carries the process's name; the rest need not. */
		struct psc_conn *tracked = bpf_map_lookup_elem(&conns, &key);

		if (tracked)
			tracked->named = 1;
	}
	return 0;
}

/* OpenSSL: SSL_read/SSL_write(_ex) give the plaintext of TLS connections. */

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
	struct scratch *s;
	__u32 zero = 0, want;
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
	conn = bpf_map_lookup_elem(&conns, &key);
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!conn || !s)
		return 0;
	conn->tls = 1;
	want = len > PSC_HTTP_CAPTURE ? PSC_HTTP_CAPTURE : len;
	if (bpf_probe_read_user(s->data, want, (void *)call->buf))
		want = 0;
	fill_event(s, tgid, key.fd, len, call->write ? PSC_HTTP_WRITE : PSC_HTTP_READ, conn, 1);
	emit(s, want, 0);
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
	fill_event(s, bpf_get_current_pid_tgid() >> 32, 0, 0, PSC_HTTP_EXEC, &none, 0);
	emit(s, 0, 1);
	return 0;
}
