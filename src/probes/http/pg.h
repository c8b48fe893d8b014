/*
 * The kernel framer's PostgreSQL turns (the frontend/backend protocol 3.0), included by
 * http.bpf.c after the RESP ones, whose scratch, turn and counters they share.
 *
 * A turn is a simple query ('Q') of one statement, written whole in one write within the
 * scan, and the backend's messages up to its ReadyForQuery. Those are walked header by
 * header across reads: the turn keeps where the next header starts (response_length),
 * so a read that holds none, the middle of a large row, costs a comparison. The startup,
 * authentication and Terminate messages make no turn. The extended protocol,
 * multi-statement queries, queries that open with a comment, COPY, and reads of more
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

/* The first bytes a client writes, or a server reads: `n` of them captured, of `len`. */
static __always_inline int pg_request_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
					     __u64 len, const struct io *io)
{
	struct psc_turn *t = &sock->turn;
	__u32 length, at = 5, text, semicolon;
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
	if (kind != 'Q' || n < 6)
		return PSC_FRAME_HANDOFF;
	/* One message, whole within the scan, its text ending with a NUL. */
	length = pg_be32(s, 1);
	if (length < 5 || length + 1 != len || len > n || s->data[length & PSC_SCAN_MASK] != 0)
		return PSC_FRAME_HANDOFF;
	for (int i = 0; i < PSC_PG_MAX_SPACE; i++) {
		if (at >= length || !pg_space(s->data[at & PSC_SCAN_MASK]))
			break;
		at++;
	}
	/* A comment before the verb is user space's to skip. */
	if (at >= length || !pg_letter(s->data[at & PSC_SCAN_MASK]))
		return PSC_FRAME_HANDOFF;
	/* One statement: a ';' ends its text or is not there. */
	semicolon = find_byte(5, length, 0x3b3b3b3b3b3b3b3bULL);
	if (semicolon && semicolon + 1 != length)
		return PSC_FRAME_HANDOFF;
	pg_word(s, t->line + PSC_PG_VERB_AT, at, length);
	__builtin_memset(t->line + PSC_PG_TAG_AT, 0, PSC_PG_TEXT_AT - PSC_PG_TAG_AT);
	/* The text's start, for the summary of a span or of a series' first statement. */
	__builtin_memcpy(t->line + PSC_PG_TEXT_AT, s->data + 5, PSC_HTTP_LINE - PSC_PG_TEXT_AT);
	text = length - 5;
	if (text > PSC_HTTP_LINE - PSC_PG_TEXT_AT)
		text = PSC_HTTP_LINE - PSC_PG_TEXT_AT;
	t->line_len = PSC_PG_TEXT_AT + text;
	database_call_key(sock, io, PSC_PROTO_POSTGRES,
			  resp_hash(14695981039346656037ULL, t->line + PSC_PG_VERB_AT));
	t->request_head = len;
	t->request_length = len;
	t->request_bytes = len;
	t->phase = PSC_PHASE_REQUEST;
	database_call_starts(s, sock, len, io);
	return PSC_FRAME_KEPT;
}

/* The backend's messages of one read being walked. */
struct pg_walk {
	__u64 src;  /* the read's user buffer, 0 when it is not one */
	__u32 len;  /* bytes of the read */
	__u32 off;  /* the next header, in the read */
	__u32 base; /* where the scratch's bytes are from, in the read */
	__u32 n;    /* bytes in the scratch */
	__u8 done;  /* ReadyForQuery walked */
	__u8 bad;   /* a message the kernel does not frame, or bytes it could not see */
	__u8 failed; /* an ErrorResponse */
	__u8 empty; /* an EmptyQueryResponse */
	__u8 cut;   /* bytes of the header at `off` in the read, when its end cut it */
	__u8 header[4];
	char tag[PSC_RESP_NAME_BYTES]; /* CommandComplete's first word */
	char class[2]; /* the SQLSTATE's first two characters */
};

/* Makes bytes [off, off + want) of the read visible in the scratch, copying them from
 * its buffer when they are past what it holds. */
static __always_inline int pg_window(struct scratch *s, struct pg_walk *w, __u32 want)
{
	__u32 got;

	if (w->off >= w->base && w->off + want <= w->base + w->n)
		return 1;
	if (!w->src || w->off + want > w->len)
		return 0;
	got = w->len - w->off;
	if (got > PSC_HTTP_SCAN)
		got = PSC_HTTP_SCAN;
	asm volatile("%0 &= 0x7ff" : "+r"(got));
	if (!got || bpf_probe_read_user(s->data, got, (void *)(w->src + w->off)))
		return 0;
	w->base = w->off;
	w->n = got;
	return want <= got;
}

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
	if (!s || w->off >= w->len)
		return 1;
	if (w->off + 5 > w->len) {
		/* A header the read's end cuts: its bytes wait for the next read. */
		if (!pg_window(s, w, w->len - w->off))
			goto bad;
		p = w->off - w->base;
		w->cut = w->len - w->off;
		for (int j = 0; j < 4; j++)
			if (j < w->cut)
				w->header[j] = s->data[(p + j) & PSC_SCAN_MASK];
		return 1;
	}
	if (!pg_window(s, w, 5))
		goto bad;
	p = w->off - w->base;
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
		if (want > w->len - w->off)
			want = w->len - w->off;
		if (!pg_window(s, w, want))
			goto bad;
		p = w->off - w->base;
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
	/* Rows, their description, notices, parameter changes, notifications. */
	case 'T': case 'D': case 'N': case 'S': case 'A':
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

	if (t->line[PSC_PG_EMPTY_AT]) {
		t->phase = PSC_PHASE_IDLE;
		if (span_sampling && trace_clients && sock->conn.role == PSC_ROLE_SERVER)
			end_serving(t->start_ns);
		return;
	}
	t->key.path_hash = resp_hash(resp_hash(t->key.path_hash, t->line + PSC_PG_TAG_AT),
				     t->line + PSC_PG_CLASS_AT);
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
	struct pg_walk w = { .src = s->src, .len = len, .n = n };
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
		__builtin_memcpy(t->line + PSC_PG_TAG_AT, w.tag, PSC_RESP_NAME_BYTES);
	if (w.failed) {
		t->key.status = 1;
		t->line[PSC_PG_CLASS_AT] = w.class[0];
		t->line[PSC_PG_CLASS_AT + 1] = w.class[1];
	}
	if (w.empty)
		t->line[PSC_PG_EMPTY_AT] = 1;
	if (w.done) {
		pg_turn_ends(s, sock, io);
		/* Bytes after ReadyForQuery answer nothing: user space frames from them. */
		return w.off < len ? (int)w.off : -1;
	}
	if (w.cut) {
		__builtin_memcpy(t->header, w.header, sizeof(t->header));
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
	struct io io = { .tgid = who >> 32, .fd = (__u32)who, .gen = gen };
	struct scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!sock || !s)
		return PSC_FRAME_HANDOFF;
	return pg_request_starts(s, sock, n, len, &io);
}

__noinline int psc_frame_pg_response(struct psc_sock *sock, __u32 n, __u64 len, __u64 who,
				     __u32 gen)
{
	struct io io = { .tgid = who >> 32, .fd = (__u32)who, .gen = gen };
	struct scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!sock || !s)
		return 0;
	return pg_response(s, sock, &io, n, len);
}
