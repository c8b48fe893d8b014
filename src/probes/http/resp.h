/*
 * The kernel framer's RESP (Redis) turns, included by http.bpf.c after the HTTP ones,
 * whose scratch, turn and counters they share.
 *
 * A client writes each command as an array of bulk strings, `*N\r\n` then N times
 * `$L\r\n` and L bytes and CRLF, and reads one reply per command. The kernel frames a
 * turn whose first read or write holds one whole command (its elements' headers within
 * the scan; the last one's bytes may run on), and a reply that is a line (`+`, `-`, `:`
 * and RESP3's `_`, `,`, `#`, `(`), a bulk string, or an array of at most
 * PSC_RESP_MAX_ELEMENTS bulk strings and integers whose headers are within the scan.
 * Pipelined commands, nested or RESP3 aggregate replies, and commands of more elements
 * hand the connection to user space, whose framer counts them one by one.
 */
#pragma once

/* Elements of a command or of a reply array the kernel walks, at most. */
#define PSC_RESP_MAX_ELEMENTS 64
/* Redis refuses bulk strings over 512 MiB (proto-max-bulk-len): larger is not RESP. */
#define PSC_RESP_MAX_BULK (512 << 20)

/* The integer of a RESP header at `p` (past its type byte): an optional '-', digits,
 * CRLF, all within `n`. Returns the offset past the CRLF, or 0. Global, as are the other
 * loops here, so that the verifier checks each once rather than at every call site. */
__noinline __u32 resp_number(const struct scratch *s, __u32 p, __u32 n, __s64 *value)
{
	__s64 v = 0;
	int negative = 0;

	if (!s || !value)
		return 0;
	if (p < n && s->data[p & PSC_SCAN_MASK] == '-') {
		negative = 1;
		p++;
	}
	/* 18 digits at most: no value wraps to a length that would pass. */
	for (int i = 0; i < 19; i++) {
		char c;

		if (p + 1 >= n)
			return 0;
		c = s->data[p & PSC_SCAN_MASK];
		if (c == '\r') {
			if (!i || s->data[(p + 1) & PSC_SCAN_MASK] != '\n')
				return 0;
			*value = negative ? -v : v;
			return p + 2;
		}
		if (c < '0' || c > '9')
			return 0;
		v = v * 10 + (c - '0');
		p++;
	}
	return 0;
}

/* Elements of an array being walked, each from its header at `at`. */
struct resp_walk {
	__u32 n;    /* bytes captured */
	__u32 at;   /* the next element's header; past the last, the array's end */
	__u32 left; /* elements not walked yet */
	__u8 request; /* a command: bulk strings only */
	__u8 bad;   /* a shape the kernel does not frame, or a header past the capture */
};

static long resp_element(__u64 i, struct resp_walk *w)
{
	struct scratch *s;
	__u32 zero = 0, next;
	__s64 len = 0;
	char c;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || !w->left)
		return 1;
	if (w->at >= w->n) {
		w->bad = 1;
		return 1;
	}
	c = s->data[w->at & PSC_SCAN_MASK];
	if (c != '$' && (w->request || c != ':')) {
		w->bad = 1;
		return 1;
	}
	next = resp_number(s, w->at + 1, w->n, &len);
	if (!next || len < -1 || len > PSC_RESP_MAX_BULK || (c == '$' && w->request && len < 0)) {
		w->bad = 1;
		return 1;
	}
	w->at = c == ':' || len < 0 ? next : next + (__u32)len + 2;
	w->left--;
	return w->left ? 0 : 1;
}

/* Walks `count` elements from `at`. Returns the offset past the last, or 0. */
static __always_inline __u32 resp_walk_array(__u32 n, __u32 at, __s64 count, __u8 request)
{
	struct resp_walk w = { .n = n, .at = at, .request = request };

	if (count < 0 || count > PSC_RESP_MAX_ELEMENTS)
		return 0;
	if (!count)
		return at;
	w.left = count;
	bpf_loop(PSC_RESP_MAX_ELEMENTS, resp_element, &w, 0);
	return w.bad || w.left ? 0 : w.at;
}

/* The end of the line that starts the scratch (a simple string, error or RESP3 scalar):
 * the offset past its CRLF, or 0 when it is not within `n`. */
static __always_inline __u32 resp_line_end(const struct scratch *s, __u32 n)
{
	__u32 cr = find_byte(1, n, 0x0d0d0d0d0d0d0d0dULL);

	if (!cr || cr + 1 >= n || s->data[(cr + 1) & PSC_SCAN_MASK] != '\n')
		return 0;
	return cr + 2;
}

/* Mixes a name's two words into a hash, as target_word does a target's. */
static __always_inline __u64 resp_hash(__u64 hash, const char *name)
{
	const __u64 *words = (const __u64 *)name;

	hash = (hash ^ words[0]) * PSC_FNV_PRIME;
	return (hash ^ words[1]) * PSC_FNV_PRIME;
}

/* Copies the command name of `len` bytes at `at` into the turn's line, upper-cased, as a
 * command is named in any case. Returns 0 when a byte cannot be in a name. */
__noinline int resp_command_name(const struct scratch *s, struct psc_turn *t, __u32 at, __u32 len)
{
	if (!s || !t)
		return 0;
	__builtin_memset(t->line, 0, PSC_RESP_ERROR_AT + PSC_RESP_NAME_BYTES);
	for (int i = 0; i < PSC_RESP_NAME_BYTES; i++) {
		char c;

		if (i >= len)
			break;
		c = s->data[(at + i) & PSC_SCAN_MASK];
		if (c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		else if (!(c >= 'A' && c <= 'Z') && !(c >= '0' && c <= '9') && c != '_' &&
			 c != '-' && c != '|' && c != '.')
			return 0;
		t->line[i] = c;
	}
	return 1;
}

/* The first bytes of a command: `n` of them captured, of a write (or read) of `len`. */
static __always_inline int resp_request_starts(struct scratch *s, struct psc_sock *sock, __u32 n,
					       __u64 len, const struct io *io)
{
	struct psc_turn *t = &sock->turn;
	__s64 count = 0, name_len = 0;
	__u32 p, name_at, end;

	if (t->phase == PSC_PHASE_RESPONSE)
		PSC_COUNT_IN(counters, PSC_HTTP_ABANDONED); /* its reply never came whole */
	t->phase = PSC_PHASE_IDLE;
	t->sampled = 0;
	if (n < 4 || s->data[0] != '*')
		return PSC_FRAME_HANDOFF; /* an inline command */
	p = resp_number(s, 1, n, &count);
	if (!p || count < 1 || p >= n || s->data[p & PSC_SCAN_MASK] != '$')
		return PSC_FRAME_HANDOFF;
	name_at = resp_number(s, p + 1, n, &name_len);
	if (!name_at || name_len < 1 || name_len > PSC_RESP_NAME_BYTES ||
	    name_at + name_len + 2 > n)
		return PSC_FRAME_HANDOFF;
	if (!resp_command_name(s, t, name_at, name_len))
		return PSC_FRAME_HANDOFF; /* user space makes it _OTHER */
	end = name_at + name_len;
	if (s->data[end & PSC_SCAN_MASK] != '\r' || s->data[(end + 1) & PSC_SCAN_MASK] != '\n')
		return PSC_FRAME_HANDOFF;
	end = resp_walk_array(n, end + 2, count - 1, 1);
	/* Not walked, or followed by more: pipelined commands are framed by user space. */
	if (!end || end < len)
		return PSC_FRAME_HANDOFF;
	t->line_len = name_len;
	database_call_key(sock, io, PSC_PROTO_REDIS, resp_hash(14695981039346656037ULL, t->line));
	t->request_head = end;
	t->request_length = end;
	t->request_bytes = len;
	t->phase = PSC_PHASE_REQUEST;
	database_call_starts(s, sock, len, io);
	return PSC_FRAME_KEPT;
}

/* An error reply's prefix (`-WRONGTYPE ...`): upper-case letters up to a space, kept in
 * the turn's line at PSC_RESP_ERROR_AT and mixed into its series' hash. */
static __always_inline void resp_error(const struct scratch *s, __u32 end, struct psc_turn *t)
{
	char *prefix = t->line + PSC_RESP_ERROR_AT;

	t->key.status = 1;
	for (int i = 0; i < PSC_RESP_NAME_BYTES; i++) {
		char c = s->data[1 + i];

		if (1 + i + 2 >= end || c == ' ')
			break;
		if (c < 'A' || c > 'Z') {
			/* Not a prefix: none is kept, and user space names it _OTHER. */
			__builtin_memset(prefix, 0, PSC_RESP_NAME_BYTES);
			break;
		}
		prefix[i] = c;
	}
	t->key.path_hash = resp_hash(t->key.path_hash, prefix);
}

/* The first bytes of a reply: `n` of them captured. */
static __always_inline int resp_response_starts(struct scratch *s, struct psc_sock *sock, __u32 n)
{
	struct psc_turn *t = &sock->turn;
	__s64 v = 0;
	__u32 end = 0;

	if (n < 3 || t->request_bytes != t->request_length)
		return PSC_FRAME_HANDOFF; /* an answer before the whole command was written */
	switch (s->data[0]) {
	case '+': case '-': case '_': case ',': case '#': case '(':
		end = resp_line_end(s, n);
		if (end && s->data[0] == '-')
			resp_error(s, end, t);
		break;
	case ':':
		end = resp_number(s, 1, n, &v);
		break;
	case '$':
		end = resp_number(s, 1, n, &v);
		if (v < -1 || v > PSC_RESP_MAX_BULK)
			end = 0;
		else if (end && v >= 0)
			end += (__u32)v + 2;
		break;
	case '*':
		end = resp_number(s, 1, n, &v);
		if (v < -1)
			end = 0;
		else if (end && v > 0)
			end = resp_walk_array(n, end, v, 0);
		break;
	}
	if (!end)
		return PSC_FRAME_HANDOFF;
	t->response_head = end;
	t->response_length = end;
	t->response_bytes = 0;
	t->phase = PSC_PHASE_RESPONSE;
	return PSC_FRAME_KEPT;
}
