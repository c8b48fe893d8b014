/* Types shared by http.bpf.c and its Rust loader. */
#pragma once

#include "periscope.h"
#include "histogram.h"
#include "process.h"

/* Bytes of each read or write copied to user space: enough for request and response
 * heads; body bytes beyond it are counted by length only. A power of two. */
#define PSC_HTTP_CAPTURE 4096

struct psc_conn_key {
	__u32 tgid;
	__u32 fd;
};

/* The protocol a connection's first bytes showed, which its framer speaks. */
enum psc_l7_protocol {
	PSC_PROTO_HTTP = 0,
	PSC_PROTO_REDIS = 1, /* RESP */
	PSC_PROTO_POSTGRES = 2,
	PSC_PROTO_MYSQL = 3, /* MySQL and MariaDB */
	PSC_PROTO_DNS = 4, /* lookups over UDP and TCP, paired in user space */
};

/* Bits of the `protocols` setting of http.bpf.c: which protocols are looked for. */
#define PSC_PROTO_BIT(p) (1u << (p))

enum psc_http_role {
	PSC_ROLE_SERVER = 1, /* accepted: reads requests, writes responses */
	PSC_ROLE_CLIENT = 2, /* connected: writes requests, reads responses */
};

/* The server of a connection: the local address for accepted connections, the remote
 * one for connected ones (only the port is known for accepted ones). */
struct psc_peer {
	__u16 port;
	__u8 family; /* AF_INET or AF_INET6; 0 when the address is unknown */
	__u8 caller; /* the client of an accepted connection: enum psc_caller */
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

/* Who called a server, as the service graph tells it. A caller on this node is an edge
 * of its own client series; one from elsewhere has none, so the server's series keep
 * its address (in the series key's family and addr). */
enum psc_caller {
	/* Loopback, or a client this node traces. */
	PSC_CALLER_LOCAL = 0,
	PSC_CALLER_REMOTE = 1,
	/* From elsewhere, past the cap of remote callers: one address for them all. */
	PSC_CALLER_OVERFLOW = 2,
};

/* The series key family of callers past the cap. */
enum psc_caller_family {
	PSC_FAMILY_OVERFLOW = 0xff,
};

/* An address of a host, IPv4-mapped IPv6 ones as IPv4: local clients' and remote
 * callers'. */
struct psc_host {
	__u32 family;
	__u8 addr[16];
};

struct psc_conn {
	__u8 role;
	__u8 tls; /* bytes on the socket are TLS records: the plaintext comes from uprobes */
	__u8 named; /* an event has carried the process's name */
	__u8 lost;  /* an event of this connection did not fit in the ring buffer */
	__u8 protocol; /* enum psc_l7_protocol, once its first bytes told */
	__u8 pad[3];
	struct psc_peer server;
	/* The client of an accepted connection (its remote side); zero for connected ones. */
	struct psc_peer client;
};

enum psc_http_event_kind {
	PSC_HTTP_READ = 1,
	PSC_HTTP_WRITE = 2,
	PSC_HTTP_CLOSE = 3,
	PSC_HTTP_EXEC = 4, /* a process started: user space looks for a libssl of its own */
	PSC_HTTP_OPEN = 5, /* this fd of this process now names a tracked connection */
	/* An exchange the kernel framed whose series has no slot yet: a psc_http_exchange. */
	PSC_HTTP_EXCHANGE = 6,
	/* The kernel hands the connection to user space: a psc_http_exchange holding the
	 * request already framed and awaiting its response (line_len 0: none), and how many
	 * bytes of the next event of the connection belong to that request (skip). */
	PSC_HTTP_HANDOFF = 7,
	/* A request the kernel framed was sampled for a span: its head follows, and the
	 * event's ts is the request's start. Sent at once, so that the calls its thread
	 * makes while serving it find their parent. */
	PSC_HTTP_SPAN_START = 8,
	/* A sampled exchange the kernel counted in its slot: a psc_http_exchange, for the
	 * span alone. */
	PSC_HTTP_SPAN_END = 9,
};

/* Bytes of a kernel-framed request's line kept per connection: method, space, target. A
 * longer target is framed by user space. For Redis: the command, and the error's prefix
 * at PSC_RESP_ERROR_AT when it failed. */
#define PSC_HTTP_LINE 128

/* Redis: the line of a kernel-framed command holds its name, and when it failed the
 * error's prefix at PSC_RESP_ERROR_AT, at most PSC_RESP_NAME_BYTES each, NUL-padded. */
enum psc_resp_line {
	PSC_RESP_NAME_BYTES = 16,
	PSC_RESP_ERROR_AT = 24,
};

/* PostgreSQL and MySQL: the line of a kernel-framed statement holds the query's first
 * word, upper-cased and NUL-padded (at most PSC_RESP_NAME_BYTES), 1 at PSC_SQL_EMPTY_AT
 * when it runs no statement, and the query's first bytes from PSC_SQL_TEXT_AT, for its
 * summary (PostgreSQL's up to its NUL within line_len; MySQL's NUL-padded).
 * - PostgreSQL: the CommandComplete tag's first word, as the verb is kept, and the
 *   SQLSTATE's class (two characters) at PSC_SQL_CLASS_AT.
 * - MySQL: the error code, little-endian, at PSC_SQL_CLASS_AT; the command's kind, where
 *   the walk of its answer stands, the capabilities it reads by, and the command's header
 *   when it was read apart from its payload, for user space to go on from a hand-off. */
enum psc_sql_line {
	PSC_SQL_VERB_AT = 0,
	PSC_SQL_TAG_AT = 16,
	PSC_SQL_CLASS_AT = 32,
	PSC_SQL_EMPTY_AT = 34,
	PSC_MYSQL_COMMAND_AT = 35, /* enum psc_mysql_command */
	PSC_MYSQL_READING_AT = 36, /* enum psc_mysql_reading */
	PSC_MYSQL_CAPS_AT = 37,    /* PSC_MYSQL_CAP_ bits */
	PSC_MYSQL_HELD_AT = 38,    /* 4 when the command's header was read apart, at HEADER_AT */
	PSC_MYSQL_LEFT_AT = 40,    /* packets left of what is being read, little-endian u32 */
	PSC_MYSQL_HEADER_AT = 44,
	PSC_SQL_TEXT_AT = 48,
};

/* What answers a MySQL command framed in the kernel. */
enum psc_mysql_command {
	PSC_MYSQL_RESULTS = 1, /* a query or execute: results, counted */
	PSC_MYSQL_PREPARE = 2, /* a statement's id and definitions: not counted */
	PSC_MYSQL_ONE = 3,     /* one packet (a ping's OK): not counted */
};

/* Where the answer to a MySQL command stands (mysql.rs's Reading). */
enum psc_mysql_reading {
	PSC_MYSQL_START = 0,       /* its first packet, or the next result's, is next */
	PSC_MYSQL_COLUMNS = 1,     /* column definitions, `left` of them */
	PSC_MYSQL_COLUMNS_EOF = 2, /* the EOF after them */
	PSC_MYSQL_ROWS = 3,        /* rows, up to an EOF, an OK starting 0xfe or an ERR */
	PSC_MYSQL_DEFINITIONS = 4, /* a prepared statement's definitions, `left` of them */
};

/* Capabilities both ends of a MySQL connection have. */
enum psc_mysql_caps {
	PSC_MYSQL_CAP_DEPRECATE_EOF = 1,
	PSC_MYSQL_CAP_QUERY_ATTRIBUTES = 2,
};

/* The standard methods, which the kernel tells apart; any other token is 0. */
enum psc_http_method {
	PSC_METHOD_OTHER = 0,
	PSC_METHOD_GET = 1,
	PSC_METHOD_HEAD = 2,
	PSC_METHOD_POST = 3,
	PSC_METHOD_PUT = 4,
	PSC_METHOD_DELETE = 5,
	PSC_METHOD_CONNECT = 6,
	PSC_METHOD_OPTIONS = 7,
	PSC_METHOD_TRACE = 8,
	PSC_METHOD_PATCH = 9,
};

/* What makes an exchange's series, as the kernel sees it: user space maps the path hash
 * to a route once, from the line of the first exchange that has no slot yet. */
struct psc_http_series_key {
	__u32 tgid;
	__u16 gen;
	__u8 role;
	__u8 method; /* enum psc_http_method */
	__u16 status;
	__u16 port; /* the server's */
	/* HTTP: of the target up to '?'. Redis: of the command and the error's prefix. */
	__u64 path_hash;
	/* The server's address on client connections; on a server's, its caller's when
	 * remote (PSC_FAMILY_OVERFLOW past the cap), else zero. */
	__u8 family;
	__u8 protocol; /* enum psc_l7_protocol */
	__u8 pad[6];
	__u8 addr[16];
};

/* An exchange framed in the kernel, for a series without a slot, or handed over. */
struct psc_http_exchange {
	struct psc_http_series_key key;
	__u64 start_ns;
	__u64 end_ns;
	__u64 request_body;
	__u64 response_body;
	__u32 tid; /* the thread that read (server) or wrote (client) the request */
	__u32 skip;
	__u16 line_len;
	__u8 sampled; /* a PSC_HTTP_SPAN_START went ahead of it */
	/* A hand-off of a connection the kernel framed until now, rather than at its first
	 * bytes: PostgreSQL's startup is over. */
	__u8 mid_stream;
	__u8 pad[4];
	char line[PSC_HTTP_LINE];
};

/* What a traceparent does to the kernel's choice (the span_parent setting of http.bpf.c). */
enum psc_span_parent {
	PSC_PARENT_FLAG = 0,  /* its sampled flag decides (the parent-based samplers) */
	PSC_PARENT_ASK = 1,   /* kept, for user space's sampler to decide on its trace id */
	PSC_PARENT_NEVER = 2, /* dropped (always_off) */
};

/* What one series slot has counted on one CPU: the sums of the durations and body
 * sizes whose buckets are in psc_http_native. */
struct psc_http_stats {
	__u64 duration_sum;
	__u64 request_body_sum;
	__u64 response_body_sum;
};

/* A series slot's exchanges by native bucket (histogram.h): durations in ns and body
 * sizes in bytes, one counter per bucket shared by every CPU, as a per-CPU copy would
 * cost a slot 9 KiB on every CPU. */
struct psc_http_native {
	__u64 duration[PSC_HIST_BUCKETS];
	__u64 request_body[PSC_HIST_BUCKETS];
	__u64 response_body[PSC_HIST_BUCKETS];
};

/* A read, write or close on a tracked connection, followed by `captured` bytes. */
struct psc_http_event {
	__u64 ts;
	__u32 tgid;
	__u32 fd;
	__u32 tid; /* the thread that read or wrote: spans of a thread's requests nest */
	__u16 gen; /* the process's generation (process.h): a reused pid is another process */
	__u8 protocol; /* enum psc_l7_protocol */
	__u8 datagram; /* a UDP datagram: one whole message (DNS) */
	__u64 len; /* bytes the syscall moved */
	__u32 captured;
	__u8 kind;
	__u8 role;
	__u8 tls;
	/* Events of this connection were lost before this one: what user space knows of
	 * its framing is stale. */
	__u8 gap;
	struct psc_peer server;
	struct psc_peer client;
	/* The process's name (its group leader's comm), for processes gone before user
	 * space reads their /proc entry. */
	char comm[PSC_COMM_LEN];
};

/* An OpenSSL call in flight on a thread, between its uprobe and uretprobe. */
struct psc_ssl_call {
	__u64 ssl;
	__u64 buf;
	__u64 done_ptr; /* size_t * of the _ex variants, 0 otherwise */
	__u32 fd;       /* learned from a syscall made inside the call, or SSL_set_fd */
	__u8 write;
	__u8 active;
	__u16 pad;
};

struct psc_ssl_key {
	__u32 tgid;
	__u32 pad;
	__u64 ssl;
};

enum psc_http_counter {
	PSC_HTTP_LOST_EVENTS = 0,  /* ring buffer full */
	PSC_HTTP_CONNS_REFUSED = 1, /* socket storage or TLS connection map refused: not traced */
	PSC_HTTP_TLS_NO_FD = 2,     /* TLS plaintext whose socket was never learned */
	/* Kernel-framed exchanges given up: a response cut short by a new request or close. */
	PSC_HTTP_ABANDONED = 3,
	PSC_HTTP_KERNEL_FRAMED = 4, /* exchanges counted in a series slot */
	PSC_HTTP_HANDOFFS = 5,      /* connections handed to user space */
	/* Requests the kernel framer decided a span for, while spans are made. */
	PSC_HTTP_SPANS_SAMPLED = 6,
	PSC_HTTP_SPANS_UNSAMPLED = 7,
	/* DNS queries over UDP the kernel left to user space to pair: its map of lookups in
	 * flight was full, or the question did not fit its record. */
	PSC_HTTP_DNS_UNPAIRED = 8,
	/* Callers from elsewhere past the remote_callers map's cap: one overflow address. */
	PSC_HTTP_CALLERS_REFUSED = 9,
	/* Addresses of local clients the local_clients map had no room for: servers here
	 * take their calls for remote ones. */
	PSC_HTTP_LOCAL_CLIENTS_REFUSED = 10,
	PSC_HTTP_COUNTERS = 11,
};

/* A DNS lookup over UDP in flight, which the kernel pairs with its answer: by the
 * process, its socket's fd and the message id. */
struct psc_dns_pending_key {
	__u32 tgid;
	__u32 fd;
	__u16 gen;
	__u16 id;
	__u32 pad;
};

/* The line of a DNS lookup the kernel pairs: the question's type (big-endian) at 0, then
 * its name as sent (length-prefixed labels and the final 0). */
enum psc_dns_line {
	PSC_DNS_NAME_AT = 2,
};

struct psc_dns_pending {
	__u64 start_ns;
	char line[PSC_HTTP_LINE]; /* 8-aligned: compared a word at a time */
	__u32 tgid;
	__u32 fd;
	__u32 tid;
	__u16 gen;
	__u16 line_len;
	struct psc_peer server; /* where the query went */
};
