/*
 * The kernel framer's MySQL and MariaDB turns (the client/server protocol's command
 * phase), included by http.bpf.c after the PostgreSQL ones, whose helpers they share.
 *
 * The handshake makes no turn. The server's greeting and the client's handshake response
 * tell the capabilities the answers are read by (DEPRECATE_EOF, QUERY_ATTRIBUTES); an SSL
 * request turns the connection to TLS, read through the uprobes.
 *
 * A turn is a command (a packet of sequence 0) and the server's packets up to the end of
 * its answer, walked packet by packet across reads as PostgreSQL's are:
 * - COM_QUERY of one statement, written whole in one write within the scan: counted;
 * - COM_STMT_EXECUTE, without a cursor, of a statement whose prepare the kernel saw:
 *   counted under that statement's verb;
 * - COM_STMT_PREPARE: not counted, but the statement id of its answer keeps its verb and
 *   text in pg_statements (shared with PostgreSQL's), for the executes that run it;
 * - commands answered by one packet (COM_PING, COM_INIT_DB, ...): not counted.
 * COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and COM_QUIT have no answer and make no turn.
 * Anything else hands the connection to user space (mysql.rs), which goes on from where
 * the walk stood: multi-statement queries, queries that open with a comment or pass the
 * scan, LOAD DATA LOCAL, cursors, COM_CHANGE_USER, binlog dumps, packets of 16 MiB, and
 * reads of more packets than one walk takes.
 */
#pragma once

/* Capability flags of the handshake. */
#define PSC_MYSQL_CLIENT_SSL (1u << 11)
#define PSC_MYSQL_CLIENT_DEPRECATE_EOF (1u << 24)
#define PSC_MYSQL_CLIENT_QUERY_ATTRIBUTES (1u << 27)

/* psc_sock.mysql: the capabilities both ends have (enum psc_mysql_caps), and these. */
#define PSC_MYSQL_SERVER_DEPRECATE_EOF 0x04
#define PSC_MYSQL_SERVER_QUERY_ATTRIBUTES 0x08
#define PSC_MYSQL_HANDSHAKEN 0x10 /* the client's handshake response was seen */
#define PSC_MYSQL_COMMANDS 0x20   /* and its first command: authentication is over */

#define PSC_COM_QUIT 0x01
#define PSC_COM_INIT_DB 0x02
#define PSC_COM_QUERY 0x03
#define PSC_COM_REFRESH 0x07
#define PSC_COM_STATISTICS 0x09
#define PSC_COM_PROCESS_KILL 0x0c
#define PSC_COM_DEBUG 0x0d
#define PSC_COM_PING 0x0e
#define PSC_COM_STMT_PREPARE 0x16
#define PSC_COM_STMT_EXECUTE 0x17
#define PSC_COM_STMT_SEND_LONG_DATA 0x18
#define PSC_COM_STMT_CLOSE 0x19
#define PSC_COM_STMT_RESET 0x1a
#define PSC_COM_SET_OPTION 0x1b
#define PSC_COM_RESET_CONNECTION 0x1f

/* A packet of this length goes on in the next; the kernel frames none of that size. */
#define PSC_MYSQL_CONTINUED 0xffffff
/* Packets walked per read, at most: a read of 16 KiB holds 3,277 of 5 bytes. */
#define PSC_MYSQL_WALK 4096
/* Bytes of a packet the walk reads, at most: its header, an OK's first byte, two
 * length-encoded integers of 9 bytes and the status flags. */
#define PSC_MYSQL_READ (4 + 21)
/* Status flag of an OK or EOF: another result of the same command follows. */
#define PSC_MYSQL_MORE_RESULTS 0x0008
/* MariaDB's statement id for "the statement prepared last". */
#define PSC_MYSQL_LAST_PREPARED 0xffffffffu

/* Where a MySQL statement id is kept in pg_statements: apart from PostgreSQL's names,
 * which are hashed. */
static __always_inline __u64 mysql_statement_name(__u32 id)
{
	return 0x4d795351ULL << 32 | id; /* "MySQ" */
}

static __always_inline __u32 mysql_le(const char *bytes, __u32 at, int width)
{
	__u32 v = 0;

	for (int j = 0; j < 4; j++)
		if (j < width)
			v |= (__u32)(__u8)bytes[(at + j) & PSC_SCAN_MASK] << (8 * j);
	return v;
}

/* The server's greeting (protocol 10) at `from`: the capabilities it offers, from the
 * upper half of its flags, after its version string, connection id, scramble, filler,
 * lower flags, character set and status. */
__noinline int psc_mysql_greeting(struct psc_sock *sock, __u32 from, __u32 n)
{
	__u32 zero = 0, version_end;
	struct scratch *s;
	__u8 upper;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || !sock || from > 4)
		return 0;
	version_end = find_byte(from + 1, n, 0);
	if (!version_end || version_end + 21 > n)
		return 0;
	upper = s->data[(version_end + 20) & PSC_SCAN_MASK];
	if (upper & (PSC_MYSQL_CLIENT_DEPRECATE_EOF >> 24))
		sock->mysql |= PSC_MYSQL_SERVER_DEPRECATE_EOF;
	if (upper & (PSC_MYSQL_CLIENT_QUERY_ATTRIBUTES >> 24))
		sock->mysql |= PSC_MYSQL_SERVER_QUERY_ATTRIBUTES;
	return 0;
}

/* The client's handshake response (or SSL request), its first packet of sequence 1 or
 * more, its payload at `h`: the capabilities both ends have. */
static __always_inline void mysql_handshake(const struct scratch *s, struct psc_sock *sock,
					    __u32 n, __u32 h, __u32 length, __u8 seq)
{
	__u32 client;

	if (n < h + 4 || !seq)
		return;
	client = mysql_le(s->data, h, 4);
	sock->mysql |= PSC_MYSQL_HANDSHAKEN;
	if ((client & PSC_MYSQL_CLIENT_DEPRECATE_EOF) && (sock->mysql & PSC_MYSQL_SERVER_DEPRECATE_EOF))
		sock->mysql |= PSC_MYSQL_CAP_DEPRECATE_EOF;
	if ((client & PSC_MYSQL_CLIENT_QUERY_ATTRIBUTES) &&
	    (sock->mysql & PSC_MYSQL_SERVER_QUERY_ATTRIBUTES))
		sock->mysql |= PSC_MYSQL_CAP_QUERY_ATTRIBUTES;
	/* TLS follows: its plaintext comes through the uprobes. */
	if ((client & PSC_MYSQL_CLIENT_SSL) && length == 32)
		sock->verdict = PSC_VERDICT_TLS;
}

/* The text of a query or prepare, from `at` to `end` (within the scan): one statement,
 * opening with its verb, which goes to the turn's line with the text's first bytes.
 * Returns 0 when user space must frame it. */
static __always_inline int mysql_statement(const struct scratch *s, struct psc_turn *t, __u32 at,
					   __u32 end)
{
	__u32 word = pg_first_word(s, at, end), semicolon, size;

	if (!word)
		return 0;
	semicolon = find_byte(at, end, 0x3b3b3b3b3b3b3b3bULL);
	if (semicolon && semicolon + 1 != end)
		return 0;
	pg_word(s, t->line + PSC_SQL_VERB_AT, word, end);
	size = end - at;
	if (size > PSC_HTTP_LINE - PSC_SQL_TEXT_AT)
		size = PSC_HTTP_LINE - PSC_SQL_TEXT_AT;
	__builtin_memset(t->line + PSC_SQL_TEXT_AT, 0, PSC_HTTP_LINE - PSC_SQL_TEXT_AT);
	bpf_probe_read_kernel(t->line + PSC_SQL_TEXT_AT, size, s->data + (at & PSC_SCAN_MASK));
	return 1;
}

/* The packet a client writes, or a server reads: `n` bytes captured of `len`. A server
 * (MariaDB's) reads a packet's 4-byte header apart from its payload: the header is held
 * in the turn until the payload comes. */
static __always_inline int mysql_request_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
						__u64 len, const struct io *io)
{
	struct pg_statement_key key = { .tgid = io->tgid, .fd = io->fd };
	struct psc_turn *t = &sock->turn;
	struct pg_statement *known;
	__u32 length, h = 4; /* where the payload starts in the scratch */
	__u64 total = len;   /* bytes of the packet so far */
	__u8 command, seq;

	if (t->phase == PSC_PHASE_RESPONSE) {
		PSC_COUNT_IN(counters, PSC_HTTP_ABANDONED); /* its answer never ended */
		t->header_len = 0; /* what its walk kept */
	}
	t->phase = PSC_PHASE_IDLE;
	t->sampled = 0;
	if (t->header_len == 4) {
		length = mysql_le((const char *)t->header, 0, 3);
		seq = t->header[3];
		h = 0;
		total = len + 4;
	} else if (n >= 4) {
		length = mysql_le(s->data, 0, 3);
		seq = s->data[3];
		if (len == 4) {
			__builtin_memcpy(t->header, s->data, 4);
			t->header_len = 4;
			return PSC_FRAME_KEPT;
		}
	} else {
		t->header_len = 0;
		return (sock->mysql & PSC_MYSQL_HANDSHAKEN) ? PSC_FRAME_HANDOFF : PSC_FRAME_KEPT;
	}
	t->header_len = 0;
	if (!(sock->mysql & PSC_MYSQL_HANDSHAKEN)) {
		mysql_handshake(s, sock, n, h, length, seq);
		return PSC_FRAME_KEPT;
	}
	/* Authentication's packets go on until the first command. */
	if (seq && !(sock->mysql & PSC_MYSQL_COMMANDS))
		return PSC_FRAME_KEPT;
	sock->mysql |= PSC_MYSQL_COMMANDS;
	/* The capabilities, and a header held, go with a hand-off too: user space reads
	 * the packet and its answer by them. */
	__builtin_memset(t->line, 0, PSC_SQL_TEXT_AT);
	t->line[PSC_MYSQL_CAPS_AT] = sock->mysql & (PSC_MYSQL_CAP_DEPRECATE_EOF |
						   PSC_MYSQL_CAP_QUERY_ATTRIBUTES);
	if (!h) {
		t->line[PSC_MYSQL_HELD_AT] = 4;
		__builtin_memcpy(t->line + PSC_MYSQL_HEADER_AT, t->header, 4);
	}
	/* A command is one packet of sequence 0, with nothing after it in this write. */
	if (n < h + 1 || seq || length == PSC_MYSQL_CONTINUED || (__u64)length + 4 < total)
		return PSC_FRAME_HANDOFF;
	command = s->data[h & PSC_SCAN_MASK];
	switch (command) {
	case PSC_COM_QUIT:
	case PSC_COM_STMT_SEND_LONG_DATA:
		return PSC_FRAME_KEPT; /* no answer */
	case PSC_COM_STMT_CLOSE:
		if (n >= h + 5) {
			key.name_hash = mysql_statement_name(mysql_le(s->data, h + 1, 4));
			bpf_map_delete_elem(&pg_statements, &key);
		}
		return PSC_FRAME_KEPT;
	case PSC_COM_QUERY:
	case PSC_COM_STMT_PREPARE: {
		__u32 at = h + 1;

		/* Query attributes: only an empty set of them is passed over. */
		if (command == PSC_COM_QUERY &&
		    (t->line[PSC_MYSQL_CAPS_AT] & PSC_MYSQL_CAP_QUERY_ATTRIBUTES)) {
			if (n < h + 3 || s->data[(h + 1) & PSC_SCAN_MASK] ||
			    s->data[(h + 2) & PSC_SCAN_MASK] != 1)
				return PSC_FRAME_HANDOFF;
			at = h + 3;
		}
		if ((__u64)length + 4 != total || len > n || !mysql_statement(s, t, at, h + length))
			return PSC_FRAME_HANDOFF;
		if (command == PSC_COM_QUERY) {
			command = PSC_MYSQL_RESULTS;
		} else {
			command = PSC_MYSQL_PREPARE;
			t->line[PSC_SQL_EMPTY_AT] = 1;
		}
		break;
	}
	case PSC_COM_STMT_EXECUTE:
		/* Its id and flags; a cursor's rows would be fetched by later commands. */
		if (n < h + 6 || length < 10 || (s->data[(h + 5) & PSC_SCAN_MASK] & 0x07))
			return PSC_FRAME_HANDOFF;
		key.name_hash = mysql_statement_name(mysql_le(s->data, h + 1, 4));
		known = bpf_map_lookup_elem(&pg_statements, &key);
		if (!known)
			return PSC_FRAME_HANDOFF;
		__builtin_memcpy(t->line + PSC_SQL_VERB_AT, known->line + PSC_SQL_VERB_AT,
				 PSC_RESP_NAME_BYTES);
		__builtin_memcpy(t->line + PSC_SQL_TEXT_AT, known->line + PSC_SQL_TEXT_AT,
				 PSC_HTTP_LINE - PSC_SQL_TEXT_AT);
		command = PSC_MYSQL_RESULTS;
		break;
	case PSC_COM_INIT_DB: case PSC_COM_REFRESH: case PSC_COM_STATISTICS:
	case PSC_COM_PROCESS_KILL: case PSC_COM_DEBUG: case PSC_COM_PING:
	case PSC_COM_STMT_RESET: case PSC_COM_SET_OPTION: case PSC_COM_RESET_CONNECTION:
		command = PSC_MYSQL_ONE;
		t->line[PSC_SQL_EMPTY_AT] = 1;
		break;
	default:
		return PSC_FRAME_HANDOFF;
	}
	t->line[PSC_MYSQL_COMMAND_AT] = command;
	t->line[PSC_MYSQL_HELD_AT] = 0; /* the packet is whole: a later hand-off has none */
	t->line_len = PSC_HTTP_LINE;
	database_call_key(sock, io, PSC_PROTO_MYSQL,
			  resp_hash(14695981039346656037ULL, t->line + PSC_SQL_VERB_AT));
	t->request_length = length + 4;
	t->request_head = t->request_length;
	t->request_bytes = total;
	t->phase = PSC_PHASE_REQUEST;
	/* A turn that runs no statement makes no span. */
	if (!t->line[PSC_SQL_EMPTY_AT])
		database_call_starts(s, sock, len, io);
	return PSC_FRAME_KEPT;
}

/* The server's packets of one read being walked. */
struct mysql_walk {
	struct read_window r;
	__u32 off;  /* where the packet being walked starts in the read, past `pre` */
	__u32 left; /* packets left of what is being read */
	__u32 id;   /* the statement a prepare's answer named */
	__u16 code; /* an ERR's */
	__u8 command;
	__u8 reading;
	__u8 deprecate_eof;
	__u8 have; /* bytes of the packet in `bytes` */
	__u8 pre;  /* of them, kept from the last read */
	__u8 done; /* the answer is over */
	__u8 bad;  /* a packet the kernel does not frame */
	__u8 cut;  /* the read ends before the bytes the walk reads of its last packet */
	__u8 failed;
	__u8 prepared;
	__u8 bytes[PSC_TURN_CARRY];
};

/* Brings the first `want` bytes of the packet being walked into `bytes`. Returns 0 when
 * the read ends first (`cut`, with what it had) or they cannot be seen (`bad`). Global,
 * so that the verifier checks it once. */
__noinline int mysql_fill(struct scratch *s, struct mysql_walk *w, __u32 want)
{
	__u32 from, take, p;

	if (!s || !w || want > PSC_MYSQL_READ)
		return 0;
	if (w->have >= want)
		return 1;
	from = w->off + w->have - w->pre;
	take = want - w->have;
	if (from + take > w->r.len) {
		w->cut = 1;
		take = from < w->r.len ? w->r.len - from : 0;
	}
	if (take && !window_holds(s, &w->r, from, take)) {
		w->bad = 1;
		return 0;
	}
	p = from - w->r.base;
	for (int j = 0; j < PSC_MYSQL_READ; j++) {
		if (j >= take)
			break;
		w->bytes[(w->have + j) & (PSC_TURN_CARRY - 1)] = s->data[(p + j) & PSC_SCAN_MASK];
	}
	w->have += take;
	return !w->cut;
}

/* A length-encoded integer at `at` of the packet: its width, or 0 when it is none or
 * passes the bytes read. */
static __always_inline __u32 mysql_lenenc(const struct mysql_walk *w, __u32 at, __u64 *value)
{
	__u8 first = w->bytes[at & (PSC_TURN_CARRY - 1)];
	__u32 width;
	__u64 v = 0;

	if (first < 0xfb) {
		*value = first;
		return 1;
	}
	width = first == 0xfc ? 2 : first == 0xfd ? 3 : first == 0xfe ? 8 : 0;
	if (!width || at + 1 + width > w->have)
		return 0;
	for (int j = 0; j < 8; j++)
		if (j < width)
			v |= (__u64)w->bytes[(at + 1 + j) & (PSC_TURN_CARRY - 1)] << (8 * j);
	*value = v;
	return 1 + width;
}

static __always_inline __u16 mysql_u16(const struct mysql_walk *w, __u32 at)
{
	if (at + 2 > w->have)
		return 0;
	return w->bytes[at & (PSC_TURN_CARRY - 1)] |
	       (__u16)w->bytes[(at + 1) & (PSC_TURN_CARRY - 1)] << 8;
}

/* An OK packet's status flags: after its header byte, affected rows and last insert id
 * (0 when they pass the bytes read, as user space reads them). */
static __always_inline __u16 mysql_ok_status(const struct mysql_walk *w)
{
	__u32 affected, insert_id;
	__u64 ignored;

	affected = mysql_lenenc(w, 5, &ignored);
	if (!affected)
		return 0;
	insert_id = mysql_lenenc(w, 5 + affected, &ignored);
	if (!insert_id)
		return 0;
	return mysql_u16(w, 5 + affected + insert_id);
}

/* One packet of `length` bytes, its first ones in `bytes`: where the answer stands after
 * it. Global, so that the verifier checks it once. */
__noinline int mysql_step(struct mysql_walk *w, __u32 length)
{
	__u8 first;
	__u64 columns;

	if (!w)
		return 0;
	first = w->have > 4 ? w->bytes[4] : 0;
	if (w->command == PSC_MYSQL_ONE) {
		w->done = 1;
		return 0;
	}
	if (w->command == PSC_MYSQL_PREPARE) {
		if (w->reading == PSC_MYSQL_START && first == 0 && w->have >= 13) {
			__u32 defined = mysql_u16(w, 9) + mysql_u16(w, 11);

			if (!w->deprecate_eof)
				defined += (mysql_u16(w, 9) > 0) + (mysql_u16(w, 11) > 0);
			w->id = w->bytes[5] | (__u32)w->bytes[6] << 8 | (__u32)w->bytes[7] << 16 |
				(__u32)w->bytes[8] << 24;
			w->prepared = 1;
			w->reading = PSC_MYSQL_DEFINITIONS;
			w->left = defined;
			w->done = !defined;
		} else if (w->reading == PSC_MYSQL_DEFINITIONS && w->left > 1) {
			w->left--;
		} else {
			w->done = 1; /* its last definition, or a failed prepare */
		}
		return 0;
	}
	switch (w->reading) {
	case PSC_MYSQL_START:
		if (first == 0x00) {
			/* Another result follows a CALL's: one statement still. */
			w->done = !(mysql_ok_status(w) & PSC_MYSQL_MORE_RESULTS);
		} else if (first == 0xff) {
			w->failed = 1;
			w->code = mysql_u16(w, 5);
			w->done = 1;
		} else if (first == 0xfb) {
			w->bad = 1; /* LOAD DATA LOCAL: the client sends a file */
		} else {
			if (!mysql_lenenc(w, 4, &columns))
				columns = 0;
			if (columns > 0xffffffffULL) {
				w->bad = 1;
				break;
			}
			w->reading = columns ? PSC_MYSQL_COLUMNS : PSC_MYSQL_ROWS;
			w->left = columns;
		}
		break;
	case PSC_MYSQL_COLUMNS:
		if (w->left > 1)
			w->left--;
		else
			w->reading = w->deprecate_eof ? PSC_MYSQL_ROWS : PSC_MYSQL_COLUMNS_EOF;
		break;
	case PSC_MYSQL_COLUMNS_EOF:
		w->reading = PSC_MYSQL_ROWS;
		break;
	case PSC_MYSQL_ROWS:
		if (first == 0xff) {
			w->failed = 1;
			w->code = mysql_u16(w, 5);
			w->done = 1;
		} else if (first == 0xfe) {
			/* An EOF (warnings, status), or the OK that stands for it. */
			__u16 status = length == 5 ? mysql_u16(w, 7) : mysql_ok_status(w);

			if (status & PSC_MYSQL_MORE_RESULTS)
				w->reading = PSC_MYSQL_START;
			else
				w->done = 1;
		}
		break;
	default:
		w->bad = 1;
	}
	return 0;
}

static long mysql_packet(__u64 i, struct mysql_walk *w)
{
	__u32 zero = 0, length, want;
	struct scratch *s;
	int content;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s) {
		w->bad = 1;
		return 1;
	}
	if (!w->have && w->off >= w->r.len)
		return 1;
	if (!mysql_fill(s, w, 4))
		return 1;
	length = w->bytes[0] | (__u32)w->bytes[1] << 8 | (__u32)w->bytes[2] << 16;
	if (length == PSC_MYSQL_CONTINUED) {
		w->bad = 1;
		return 1;
	}
	/* Which packets' payloads are read: a result's first, what may end rows, and a
	 * prepare's first; column and parameter definitions are counted unread. */
	content = w->command == PSC_MYSQL_ONE ? 0
		  : w->command == PSC_MYSQL_PREPARE ? w->reading == PSC_MYSQL_START
		  : w->reading == PSC_MYSQL_START || w->reading == PSC_MYSQL_ROWS;
	if (content && length) {
		if (!mysql_fill(s, w, 5))
			return 1;
		if (w->reading == PSC_MYSQL_START || w->bytes[4] == 0xfe || w->bytes[4] == 0xff) {
			want = 4 + (length < 21 ? length : 21);
			if (!mysql_fill(s, w, want))
				return 1;
		}
	}
	mysql_step(w, length);
	if (w->bad)
		return 1;
	w->off = w->off + 4 + length - w->pre;
	w->have = 0;
	w->pre = 0;
	return w->done ? 1 : 0;
}

/* The answer of a command ended: its statement is counted, unless it runs none. */
static __always_inline void mysql_turn_ends(struct scratch *s, struct psc_sock *sock,
					    const struct io *io, __u16 code)
{
	struct psc_turn *t = &sock->turn;

	if (t->line[PSC_SQL_EMPTY_AT]) {
		t->phase = PSC_PHASE_IDLE;
		if (span_sampling && trace_clients && sock->conn.role == PSC_ROLE_SERVER)
			end_serving(t->start_ns);
		return;
	}
	if (t->key.status)
		t->key.path_hash = (t->key.path_hash ^ ((__u64)code + 1)) * PSC_FNV_PRIME;
	finish(s, sock, io);
}

/* A read (client) or write (server) of the server's answer that opens it or holds the
 * start of its next packet: `n` bytes of `len` captured. Returns -1 when it was counted,
 * or the bytes walked when the connection must go to user space. */
static __always_inline int mysql_response(struct scratch *s, struct psc_sock *sock,
					  const struct io *io, __u32 n, __u64 len)
{
	struct mysql_walk w = { .r = { .src = s->src, .len = len, .n = n } };
	struct pg_statement_key key = { .tgid = io->tgid, .fd = io->fd };
	struct psc_turn *t = &sock->turn;
	__u64 before;

	if (t->phase == PSC_PHASE_REQUEST) {
		if (t->request_bytes != t->request_length)
			return 0; /* an answer before the whole command was written */
		t->phase = PSC_PHASE_RESPONSE;
		t->response_head = 0;
		t->response_length = 0;
		t->response_bytes = 0;
		t->header_len = 0;
		t->line[PSC_MYSQL_READING_AT] = PSC_MYSQL_START;
	}
	before = t->response_bytes;
	t->response_bytes += len;
	if (t->phase != PSC_PHASE_RESPONSE)
		return -1;
	if (t->header_len) {
		__builtin_memcpy(w.bytes, t->header, sizeof(w.bytes));
		w.have = t->header_len < PSC_MYSQL_READ ? t->header_len : PSC_MYSQL_READ;
		w.pre = w.have;
		t->header_len = 0;
	} else if (t->response_length < before || t->response_length - before >= len) {
		return -1;
	} else {
		w.off = t->response_length - before;
	}
	w.command = t->line[PSC_MYSQL_COMMAND_AT];
	w.reading = t->line[PSC_MYSQL_READING_AT];
	w.left = mysql_le(t->line, PSC_MYSQL_LEFT_AT, 4);
	w.deprecate_eof = t->line[PSC_MYSQL_CAPS_AT] & PSC_MYSQL_CAP_DEPRECATE_EOF;
	bpf_loop(PSC_MYSQL_WALK, mysql_packet, &w, 0);
	t->line[PSC_MYSQL_READING_AT] = w.reading;
	for (int j = 0; j < 4; j++)
		t->line[PSC_MYSQL_LEFT_AT + j] = w.left >> (8 * j);
	if (w.prepared) {
		key.name_hash = mysql_statement_name(w.id);
		bpf_map_update_elem(&pg_statements, &key, t->line, BPF_ANY);
		key.name_hash = mysql_statement_name(PSC_MYSQL_LAST_PREPARED);
		bpf_map_update_elem(&pg_statements, &key, t->line, BPF_ANY);
	}
	if (w.failed) {
		t->key.status = 1;
		t->line[PSC_SQL_CLASS_AT] = w.code;
		t->line[PSC_SQL_CLASS_AT + 1] = w.code >> 8;
	}
	if (w.done) {
		mysql_turn_ends(s, sock, io, w.code);
		/* Bytes after the answer answer nothing: user space frames from them. */
		return w.off < len ? (int)w.off : -1;
	}
	if (w.cut) {
		__builtin_memcpy(t->header, w.bytes, sizeof(t->header));
		t->header_len = w.have;
		t->response_length = before + len;
		return -1;
	}
	/* A packet cut by the last read is not framed: user space starts where it can. */
	if (w.bad)
		return w.pre ? 0 : (int)w.off;
	if (w.off < len)
		return w.off;
	t->response_length = before + w.off;
	return -1;
}

/* The entry points, global so that the verifier checks each once. */
__noinline int psc_frame_mysql_request(struct psc_sock *sock, __u32 n, __u64 len, __u64 who,
				       __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return PSC_FRAME_HANDOFF;
	return mysql_request_starts(s, sock, n, len, &io);
}

__noinline int psc_frame_mysql_response(struct psc_sock *sock, __u32 n, __u64 len, __u64 who,
					__u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return 0;
	return mysql_response(s, sock, &io, n, len);
}
