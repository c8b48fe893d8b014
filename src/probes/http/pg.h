/*
 * The kernel framer's PostgreSQL turns (the frontend/backend protocol 3.0), included by
 * http.bpf.c after the RESP ones, whose scratch, turn and counters they share.
 *
 * A turn is a query of one statement, written whole in one write within the scan, and
 * the backend's messages up to its ReadyForQuery. The query is a simple one ('Q'), or an
 * extended one (Parse, Bind, Describe, Execute, Sync), its statement named by a Parse in
 * this write or an earlier one (kept in pg_statements). The answer is walked header by
 * header across reads: the turn keeps where the next header starts (response_length),
 * so a read that holds none, the middle of a large row, costs a comparison.
 *
 * The startup, authentication and Terminate messages make no turn. Pipelined or
 * row-limited executes, named portals, multi-statement queries, queries that open with a
 * comment, a statement parsed before the probe attached, COPY, and reads of more
 * messages than one walk takes hand the connection to user space (pg.rs), which counts
 * each statement. A tag or an error's fields cut by the end of a read are read as far as
 * they go; a header cut so is put together from the next read, and its message, if a
 * tag or an error, names no verb or class of its own (the query's verb, `_OTHER`).
 */
#pragma once

/* Messages walked per read, at most: a read of 16 KiB holds 3,277 of 5 bytes. */
#define PSC_PG_WALK 4096
/* The server refuses messages of 1 GiB and more: longer is not PostgreSQL. */
#define PSC_PG_MAX_MESSAGE (1 << 30)
/* Bytes of an ErrorResponse's fields looked through for its SQLSTATE. */
#define PSC_PG_ERROR_SCAN 96
/* White space before a query's first word, at most. */
#define PSC_PG_MAX_SPACE 16

/* The big-endian length at `p` of the scratch. */
static __always_inline __u32 pg_be32(const struct scratch *s, __u32 p)
{
	return (__u32)(__u8)s->data[p & PSC_SCAN_MASK] << 24 |
	       (__u32)(__u8)s->data[(p + 1) & PSC_SCAN_MASK] << 16 |
	       (__u32)(__u8)s->data[(p + 2) & PSC_SCAN_MASK] << 8 |
	       (__u32)(__u8)s->data[(p + 3) & PSC_SCAN_MASK];
}

/* White space as SQL text is trimmed of before its verb (sql.rs). */
static __always_inline int pg_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static __always_inline int pg_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Copies the ASCII letters at `at` (before `end`) into `word`, upper-cased and
 * NUL-padded, at most PSC_RESP_NAME_BYTES of them: a verb as sql.rs reads one. */
static __always_inline void pg_word(const struct scratch *s, char *word, __u32 at, __u32 end)
{
	__builtin_memset(word, 0, PSC_RESP_NAME_BYTES);
	for (int i = 0; i < PSC_RESP_NAME_BYTES; i++) {
		char c;

		if (at + i >= end)
			break;
		c = s->data[(at + i) & PSC_SCAN_MASK];
		if (!pg_letter(c))
			break;
		word[i] = c & ~0x20;
	}
}

/* Prepared statements by connection (process and fd) and name: the verb and text of each,
 * as a turn's line holds them, from its Parse, for the Binds that run it. LRU: a
 * statement evicted, or parsed before the probe attached, hands its connection to user
 * space when it is bound. */
struct pg_statement_key {
	__u32 tgid;
	__u32 fd;
	__u64 name_hash;
};

struct pg_statement {
	char line[PSC_HTTP_LINE];
};

PSC_LRU_HASH(pg_statements, struct pg_statement_key, struct pg_statement, 16384);

/* Messages of an extended query walked, at most: Parse, Bind, Describe, Execute, Sync. */
#define PSC_PG_REQUEST_MESSAGES 8

/* Hashes the NUL-ended name at `p` (before `end`, at most 64 bytes, as NAMEDATALEN
 * allows) into `hash`. Returns the offset past its NUL, or 0. */
__noinline __u32 pg_name(const struct scratch *s, __u32 p, __u32 end, __u64 *hash)
{
	__u64 h = 14695981039346656037ULL;

	if (!s || !hash)
		return 0;
	for (int i = 0; i < 64; i++) {
		char c;

		if (p + i >= end)
			return 0;
		c = s->data[(p + i) & PSC_SCAN_MASK];
		if (!c) {
			*hash = h;
			return p + i + 1;
		}
		h = (h ^ (__u8)c) * PSC_FNV_PRIME;
	}
	return 0;
}

/* The first word of a query's text at `at` (before `end`), past white space: where it
 * starts, or 0 when a comment or nothing comes first (user space's to skip). */
static __always_inline __u32 pg_first_word(const struct scratch *s, __u32 at, __u32 end)
{
	for (int i = 0; i < PSC_PG_MAX_SPACE; i++) {
		if (at >= end || !pg_space(s->data[at & PSC_SCAN_MASK]))
			break;
		at++;
	}
	return at < end && pg_letter(s->data[at & PSC_SCAN_MASK]) ? at : 0;
}

/* A simple query ('Q'), `len` bytes captured whole: one statement, whose verb and text
 * go to the turn's line. Returns 0 when user space must frame it. */
static __always_inline int pg_simple_query(const struct scratch *s, struct psc_turn *t, __u32 n,
					   __u64 len)
{
	__u32 length = pg_be32(s, 1), at, semicolon;

	/* One message, whole within the scan, its text ending with a NUL. */
	if (n < 6 || length < 5 || length + 1 != len || len > n ||
	    s->data[length & PSC_SCAN_MASK] != 0)
		return 0;
	at = pg_first_word(s, 5, length);
	if (!at)
		return 0;
	/* One statement: a ';' ends its text or is not there. */
	semicolon = find_byte(5, length, 0x3b3b3b3b3b3b3b3bULL);
	if (semicolon && semicolon + 1 != length)
		return 0;
	pg_word(s, t->line + PSC_SQL_VERB_AT, at, length);
	__builtin_memcpy(t->line + PSC_SQL_TEXT_AT, s->data + 5, PSC_HTTP_LINE - PSC_SQL_TEXT_AT);
	return 1;
}

/* An extended query's messages in one write, walked. */
struct pg_request_walk {
	__u64 parsed_hash; /* the name of the statement a Parse prepares */
	__u64 bound_hash;  /* the name of the statement a Bind runs */
	__u32 n;
	__u32 off;
	__u32 parsed_text; /* where the Parse's query text starts */
	__u32 parsed_word; /* and its first word */
	__u8 parsed;
	__u8 bound;
	__u8 executes;
	__u8 synced;
	__u8 bad;
};

static long pg_request_message(__u64 i, struct pg_request_walk *w)
{
	__u32 zero = 0, p, end, length, at;
	struct scratch *s;
	char kind;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || w->off + 5 > w->n)
		goto bad;
	kind = s->data[w->off & PSC_SCAN_MASK];
	length = pg_be32(s, w->off + 1);
	if (length < 4 || length > w->n || w->off + 1 + length > w->n)
		goto bad;
	p = w->off + 5;
	end = w->off + 1 + length;
	switch (kind) {
	case 'P':
		if (w->parsed)
			goto bad;
		at = pg_name(s, p, end, &w->parsed_hash);
		if (!at)
			goto bad;
		w->parsed_text = at;
		w->parsed_word = pg_first_word(s, at, end);
		if (!w->parsed_word)
			goto bad;
		w->parsed = 1;
		break;
	case 'B':
		/* The unnamed portal only: a named one may be run by a later write. */
		if (w->bound || p >= end || s->data[p & PSC_SCAN_MASK])
			goto bad;
		if (!pg_name(s, p + 1, end, &w->bound_hash))
			goto bad;
		w->bound = 1;
		break;
	case 'E':
		/* Run to its end: a row limit would suspend it for later writes. */
		if (w->executes || p + 5 > end || s->data[p & PSC_SCAN_MASK] || pg_be32(s, p + 1))
			goto bad;
		w->executes = 1;
		break;
	case 'D': case 'C': /* Describe, Close */
		break;
	case 'S':
		if (end != w->n)
			goto bad; /* Sync ends the write, or more follows */
		w->synced = 1;
		return 1;
	default:
		goto bad;
	}
	w->off = end;
	return 0;
bad:
	w->bad = 1;
	return 1;
}

/* An extended query (Parse, Bind, Describe, Execute, Sync), `len` bytes captured whole,
 * running at most one statement: its verb and text, from its Parse in this write or an
 * earlier one, go to the turn's line. A turn that runs none (a Parse alone) is walked
 * and not counted. Returns 0 when user space must frame it. */
static __always_inline int pg_extended_query(struct scratch *s, struct psc_turn *t, __u32 n,
					     __u64 len, const struct io *io)
{
	struct pg_request_walk w = { .n = n };
	struct pg_statement_key key = { .tgid = io->tgid, .fd = io->fd };
	struct pg_statement *known;

	if (len > n)
		return 0;
	bpf_loop(PSC_PG_REQUEST_MESSAGES, pg_request_message, &w, 0);
	if (w.bad || !w.synced)
		return 0;
	if (w.parsed) {
		pg_word(s, t->line + PSC_SQL_VERB_AT, w.parsed_word, n);
		__builtin_memcpy(t->line + PSC_SQL_TEXT_AT, s->data + (w.parsed_text & PSC_SCAN_MASK),
				 PSC_HTTP_LINE - PSC_SQL_TEXT_AT);
		key.name_hash = w.parsed_hash;
		bpf_map_update_elem(&pg_statements, &key, t->line, BPF_ANY);
	}
	if (!w.executes) {
		t->line[PSC_SQL_EMPTY_AT] = 1;
		return 1;
	}
	if (!w.bound)
		return 0;
	if (!w.parsed || w.bound_hash != w.parsed_hash) {
		key.name_hash = w.bound_hash;
		known = bpf_map_lookup_elem(&pg_statements, &key);
		if (!known)
			return 0;
		__builtin_memcpy(t->line + PSC_SQL_VERB_AT, known->line + PSC_SQL_VERB_AT,
				 PSC_RESP_NAME_BYTES);
		__builtin_memcpy(t->line + PSC_SQL_TEXT_AT, known->line + PSC_SQL_TEXT_AT,
				 PSC_HTTP_LINE - PSC_SQL_TEXT_AT);
	}
	return 1;
}

/* The first bytes a client writes, or a server reads: `n` of them captured, of `len`. */
static __always_inline int pg_request_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
					     __u64 len, const struct io *io)
{
	struct psc_turn *t = &sock->turn;
	char kind;

	if (t->phase == PSC_PHASE_RESPONSE)
		PSC_COUNT_IN(counters, PSC_HTTP_ABANDONED); /* its ReadyForQuery never came */
	t->phase = PSC_PHASE_IDLE;
	t->sampled = 0;
	if (!n)
		return PSC_FRAME_HANDOFF;
	kind = s->data[0];
	/* Startup, SSL and cancel requests (untyped: their length's first byte is 0),
	 * authentication ('p') and Terminate ('X') run no statement. */
	if (kind == 0 || kind == 'p' || kind == 'X')
		return PSC_FRAME_KEPT;
	__builtin_memset(t->line + PSC_SQL_TAG_AT, 0, PSC_SQL_TEXT_AT - PSC_SQL_TAG_AT);
	if (kind == 'Q' ? !pg_simple_query(s, t, n, len) : !pg_extended_query(s, t, n, len, io))
		return PSC_FRAME_HANDOFF;
	/* The text runs to its NUL, which user space looks for. */
	t->line_len = PSC_HTTP_LINE;
	database_call_key(sock, io, PSC_PROTO_POSTGRES,
			  resp_hash(14695981039346656037ULL, t->line + PSC_SQL_VERB_AT));
	t->request_head = len;
	t->request_length = len;
	t->request_bytes = len;
	t->phase = PSC_PHASE_REQUEST;
	/* A turn that runs no statement makes no span. */
	if (!t->line[PSC_SQL_EMPTY_AT])
		database_call_starts(s, sock, len, io);
	return PSC_FRAME_KEPT;
}

/* The backend's messages of one read being walked. */
struct pg_walk {
	struct read_window r;
	__u32 off;  /* the next header, in the read */
	__u8 done;  /* ReadyForQuery walked */
	__u8 bad;   /* a message the kernel does not frame, or bytes it could not see */
	__u8 failed; /* an ErrorResponse */
	__u8 empty; /* an EmptyQueryResponse */
	__u8 cut;   /* bytes of the header at `off` in the read, when its end cut it */
	__u8 header[4];
	char tag[PSC_RESP_NAME_BYTES]; /* CommandComplete's first word */
	char class[2]; /* the SQLSTATE's first two characters */
};

/* A CommandComplete's tag, from `from` to `end`: its first word is kept. Global, as
 * the loops below are, so that the verifier checks it once. */
__noinline int pg_tag(const struct scratch *s, struct pg_walk *w, __u32 from, __u32 end)
{
	if (!s || !w)
		return 0;
	pg_word(s, w->tag, from, end);
	return 0;
}

/* An ErrorResponse's SQLSTATE: its fields, from `from` to `end`, are a code byte and a
 * NUL-ended string each; 'C' is the SQLSTATE. Its first two characters are kept. */
__noinline int pg_error_class(const struct scratch *s, struct pg_walk *w, __u32 from, __u32 end)
{
	int field_starts = 1;

	if (!s || !w)
		return 0;
	for (int i = 0; i < PSC_PG_ERROR_SCAN; i++) {
		__u32 q = from + i;
		char c;

		if (q + 2 >= end)
			return 0;
		c = s->data[q & PSC_SCAN_MASK];
		if (field_starts) {
			if (!c)
				return 0;
			if (c == 'C') {
				char a = s->data[(q + 1) & PSC_SCAN_MASK];
				char b = s->data[(q + 2) & PSC_SCAN_MASK];

				/* As user space takes a class: two letters or digits, upper-cased;
				 * anything else is none, which it names _OTHER. */
				if ((pg_letter(a) || (a >= '0' && a <= '9')) &&
				    (pg_letter(b) || (b >= '0' && b <= '9'))) {
					w->class[0] = pg_letter(a) ? a & ~0x20 : a;
					w->class[1] = pg_letter(b) ? b & ~0x20 : b;
				}
				return 0;
			}
			field_starts = 0;
		} else if (!c) {
			field_starts = 1;
		}
	}
	return 0;
}

static long pg_message(__u64 i, struct pg_walk *w)
{
	struct scratch *s;
	__u32 zero = 0, p, length, want;
	char kind;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || w->off >= w->r.len)
		return 1;
	if (w->off + 5 > w->r.len) {
		/* A header the read's end cuts: its bytes wait for the next read. */
		if (!window_holds(s, &w->r, w->off, w->r.len - w->off))
			goto bad;
		p = w->off - w->r.base;
		w->cut = w->r.len - w->off;
		for (int j = 0; j < 4; j++)
			if (j < w->cut)
				w->header[j] = s->data[(p + j) & PSC_SCAN_MASK];
		return 1;
	}
	if (!window_holds(s, &w->r, w->off, 5))
		goto bad;
	p = w->off - w->r.base;
	kind = s->data[p & PSC_SCAN_MASK];
	length = pg_be32(s, p + 1);
	if (length < 4 || length >= PSC_PG_MAX_MESSAGE)
		goto bad;
	switch (kind) {
	case 'Z':
		if (length != 5)
			goto bad;
		w->done = 1;
		w->off += 6;
		return 1;
	case 'C':
	case 'E':
		want = kind == 'C' ? 5 + PSC_RESP_NAME_BYTES + 1 : 5 + PSC_PG_ERROR_SCAN;
		if (want > length + 1)
			want = length + 1;
		if (want > w->r.len - w->off)
			want = w->r.len - w->off;
		if (!window_holds(s, &w->r, w->off, want))
			goto bad;
		p = w->off - w->r.base;
		if (kind == 'C') {
			pg_tag(s, w, p + 5, p + want);
		} else {
			w->failed = 1;
			pg_error_class(s, w, p + 5, p + want);
		}
		break;
	case 'I':
		w->empty = 1;
		break;
	/* Rows, their description, notices, parameter changes, notifications; the
	 * extended protocol's Parse, Bind and Close completions, parameter descriptions
	 * and NoData. */
	case 'T': case 'D': case 'N': case 'S': case 'A':
	case '1': case '2': case '3': case 't': case 'n':
		break;
	default:
		goto bad; /* COPY, or not a simple query's answer */
	}
	w->off += 1 + length;
	return 0;
bad:
	w->bad = 1;
	return 1;
}

/* The ReadyForQuery of a turn was walked: its statement is counted, unless it was empty. */
static __always_inline void pg_turn_ends(struct scratch *s, struct psc_sock *sock,
					 const struct io *io)
{
	struct psc_turn *t = &sock->turn;

	if (t->line[PSC_SQL_EMPTY_AT]) {
		t->phase = PSC_PHASE_IDLE;
		if (span_sampling && trace_clients && sock->conn.role == PSC_ROLE_SERVER)
			end_serving(t->start_ns);
		return;
	}
	t->key.path_hash = resp_hash(resp_hash(t->key.path_hash, t->line + PSC_SQL_TAG_AT),
				     t->line + PSC_SQL_CLASS_AT);
	finish(s, sock, io);
}

/* The message whose header the last read cut, put together with the first bytes of this
 * one (`n` captured): where it ends in this read, and what it says, in `w`. */
static __always_inline void pg_cut_header(const struct scratch *s, const struct psc_turn *t,
					  struct pg_walk *w, __u32 n)
{
	__u32 have = t->header_len, length;
	__u8 h[5] = {};

	if (have > 4 || n < 5 - have) {
		w->bad = 1;
		return;
	}
	for (int j = 0; j < 5; j++)
		h[j] = j < have ? t->header[j & 3] : s->data[(j - have) & PSC_SCAN_MASK];
	length = (__u32)h[1] << 24 | (__u32)h[2] << 16 | (__u32)h[3] << 8 | h[4];
	if (length < 4 || length >= PSC_PG_MAX_MESSAGE) {
		w->bad = 1;
		return;
	}
	switch (h[0]) {
	case 'Z':
		w->done = length == 5;
		w->bad = length != 5;
		break;
	case 'E':
		w->failed = 1; /* its fields are not read: no class */
		break;
	case 'I':
		w->empty = 1;
		break;
	case 'C': case 'T': case 'D': case 'N': case 'S': case 'A':
	case '1': case '2': case '3': case 't': case 'n':
		break;
	default:
		w->bad = 1;
	}
	w->off = 1 + length - have;
}

/* A read (client) or write (server) of the backend's answer that opens it or holds the
 * header of its next message: `n` bytes of `len` captured. Returns -1 when it was
 * counted, or the bytes walked when the connection must go to user space. */
static __always_inline int pg_response(struct scratch *s, struct psc_sock *sock,
				       const struct io *io, __u32 n, __u64 len)
{
	struct psc_turn *t = &sock->turn;
	struct pg_walk w = { .r = { .src = s->src, .len = len, .n = n } };
	__u64 before;

	if (t->phase == PSC_PHASE_REQUEST) {
		if (t->request_bytes != t->request_length)
			return 0; /* an answer before the whole query was written */
		t->phase = PSC_PHASE_RESPONSE;
		t->response_head = 0;
		t->response_length = 0;
		t->response_bytes = 0;
		t->header_len = 0;
	}
	before = t->response_bytes;
	t->response_bytes += len;
	if (t->phase != PSC_PHASE_RESPONSE)
		return -1;
	if (t->header_len) {
		pg_cut_header(s, t, &w, n);
		t->header_len = 0;
		if (w.bad)
			return 0; /* not a header: user space finds its framing lost */
	} else if (t->response_length < before || t->response_length - before >= len) {
		return -1;
	} else {
		w.off = t->response_length - before;
	}
	if (!w.done && w.off < len)
		bpf_loop(PSC_PG_WALK, pg_message, &w, 0);
	if (w.tag[0])
		__builtin_memcpy(t->line + PSC_SQL_TAG_AT, w.tag, PSC_RESP_NAME_BYTES);
	if (w.failed) {
		t->key.status = 1;
		t->line[PSC_SQL_CLASS_AT] = w.class[0];
		t->line[PSC_SQL_CLASS_AT + 1] = w.class[1];
	}
	if (w.empty)
		t->line[PSC_SQL_EMPTY_AT] = 1;
	if (w.done) {
		pg_turn_ends(s, sock, io);
		/* Bytes after ReadyForQuery answer nothing: user space frames from them. */
		return w.off < len ? (int)w.off : -1;
	}
	if (w.cut) {
		__builtin_memcpy(t->header, w.header, sizeof(w.header));
		t->header_len = w.cut;
		t->response_length = before + w.off;
		return -1;
	}
	if (w.bad || w.off < len)
		return w.off;
	t->response_length = before + w.off;
	return -1;
}

/* The entry points, global so that the verifier checks each once, apart from the other
 * protocols' turns (the framer's entry points in http.bpf.c call them). */
__noinline int psc_frame_pg_request(struct psc_sock *sock, __u32 n, __u64 len, __u64 who,
				    __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return PSC_FRAME_HANDOFF;
	return pg_request_starts(s, sock, n, len, &io);
}

__noinline int psc_frame_pg_response(struct psc_sock *sock, __u32 n, __u64 len, __u64 who,
				     __u32 gen)
{
	struct io io = io_of(who, gen);
	struct scratch *s = this_scratch();

	if (!sock || !s)
		return 0;
	return pg_response(s, sock, &io, n, len);
}
