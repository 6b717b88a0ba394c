/*
 * util.h — small pure helpers: clocks, hex, secure randomness, SHA-256, constant-time
 * comparison, identifier checks, ISO-8601 timestamps (also as JSON values), and
 * write-first output on bufferevents.
 *
 * Nothing here keeps state or blocks beyond a getrandom(2) call.
 */
#ifndef SWITCHBOARD_UTIL_H
#define SWITCHBOARD_UTIL_H

#include <event2/bufferevent.h>
#include <stddef.h>
#include <stdint.h>

struct json_t; /* jansson's json_t */

/* Monotonic clock in microseconds (for durations and timeouts). */
uint64_t sb_now_mono_us(void);
/* Wall clock in milliseconds since the Unix epoch (for timestamps stored or shown). */
int64_t sb_now_wall_ms(void);

/* The clocks read once per callback chain. Between sb_clock_chain_begin() and its
 * sb_clock_chain_end() (they nest; one thread's) the first sb_chain_mono_us() or
 * sb_chain_wall_ms() reads its clock and every later one in the chain returns that same
 * value; outside a chain they read the clock each time, like sb_now_mono_us/wall_ms.
 * For the request path's timestamps and durations (a chain runs for microseconds; the
 * request path asked the clock ~12 times per message, ~30 ns each) — never for a loop
 * that waits for the clock to move. */
void sb_clock_chain_begin(void);
void sb_clock_chain_end(void);
uint64_t sb_chain_mono_us(void);
int64_t sb_chain_wall_ms(void);

/* Writes |ms| (epoch milliseconds) as "2026-11-24T14:02:03.123Z" into |out| (>= 32 bytes). */
void sb_format_iso8601(int64_t ms, char out[32]);
/* |ms| as a new JSON string in that form, or JSON null when |ms| <= 0 (never set).
 * The caller owns the reference (json_object_set_new takes it). */
struct json_t *sb_json_iso8601(int64_t ms);

/* Copies |src| into |dst| (|cap| >= 1 bytes), cut to cap - 1 bytes like snprintf's "%s",
 * always NUL-terminated. Returns the bytes copied. */
size_t sb_copy_str(char *dst, size_t cap, const char *src);

/* |a| then |b| then |c| into |dst| (|cap| >= 1 bytes), cut like snprintf's "%s%s%s" and
 * always NUL-terminated; returns the length written. For Redis key names built per
 * message ("sb:{" ws "}:dstats"): a tenth of snprintf's instructions. */
size_t sb_concat3(char *dst, size_t cap, const char *a, const char *b, const char *c);

/* |v| in decimal into |out| (24 bytes), like "%lld" without printf. Returns the length. */
size_t sb_fmt_ll(char out[24], long long v);

/* |ms| like "%.3f" (milliseconds to the microsecond) into |out| (40 bytes), without printf
 * for the usual values (0 <= ms < 10^12); returns the length. */
size_t sb_fmt_ms3(char out[40], double ms);

/* Lower-case hex of |n| bytes into |out| (2n+1 bytes, NUL-terminated). */
void sb_hex_encode(const unsigned char *in, size_t n, char *out);

/* Fills |out| with |n| cryptographically secure random bytes. Aborts if the kernel
 * cannot provide them (there is no safe fallback for token minting). */
void sb_random_bytes(unsigned char *out, size_t n);

/* Writes a random token: |prefix| followed by 2*|nbytes| hex chars, into |out|
 * (capacity |cap|). Returns SB_OK or SB_ERR_TOOBIG if it does not fit. */
int sb_random_token(const char *prefix, size_t nbytes, char *out, size_t cap);

/* Like sb_random_token, for identifiers that are not secrets (queue entry ids, request
 * ids): the bytes come from a per-thread pool refilled from the kernel 256 bytes at a
 * time, so most calls make no system call. |nbytes| at most 256. Returns SB_OK or
 * SB_ERR_TOOBIG. */
int sb_random_id(const char *prefix, size_t nbytes, char *out, size_t cap);

/* SHA-256 of |len| bytes as 64 lower-case hex chars + NUL into |out|. */
void sb_sha256_hex(const void *data, size_t len, char out[65]);
/* FNV-1a of the |n| bytes at |p|: a quick, unkeyed hash for tables whose keys nobody
 * outside can choose to collide on purpose (or where a collision only costs a miss). */
uint64_t sb_fnv1a(const void *p, size_t n);

/* Frees this thread's digest context (sb_sha256_hex makes one per thread); call as a
 * thread that hashed exits. */
void sb_sha256_thread_clear(void);

/* Constant-time equality of two buffers of the same length |n|: 1 equal, 0 not.
 * Callers compare fixed-length digests, so length itself leaks nothing. */
int sb_ct_equal(const void *a, const void *b, size_t n);

/* 1 if |s| is a valid workspace id (1..SB_WS_ID_MAX chars of [A-Za-z0-9._-], not "."/".."). */
int sb_valid_workspace_id(const char *s);

/* Parses a decimal integer in [min,max] from the whole of |s|. SB_OK or SB_ERR_INVALID. */
int sb_parse_long(const char *s, long min, long max, long *out);

/* Percent-decodes the |n| bytes at |s| (URL userinfo and query values) into a new string
 * the caller frees with sb_free; NULL for a malformed escape or an escaped NUL. */
char *sb_pct_decode(const char *s, size_t n);

/* Write-first output on a bufferevent (what nginx does: no epoll change per write).
 * sb_bev_write_first puts a plain socket bufferevent in that mode — EV_WRITE disabled —
 * and returns 1; anything else (TLS, no socket) gets EV_WRITE enabled, as libevent
 * writes it by itself, and 0. In write-first mode the owner calls sb_bev_flush after
 * queueing output and from its write callback: it writes the output straight to the
 * socket (one writev) and enables EV_WRITE only when bytes remain, so the bufferevent
 * writes the rest as the socket drains (its write timeout armed meanwhile) and calls the
 * write callback; with the output empty it disables EV_WRITE again. sb_bev_flush never
 * runs a callback; a socket error leaves the bytes queued and surfaces through the
 * bufferevent's event callback (BEV_EVENT_ERROR | BEV_EVENT_WRITING). */
struct evbuffer;

/* An HTTP/2 DATA frame written by hand (nghttp2's send_data callback, front and agent
 * side alike): sb_h2_data_head adds the 9-byte frame header |framehd| and, when the frame
 * is padded (|padlen| > 0, nghttp2's frame->data.padlen), the pad length byte;
 * the caller adds the payload; sb_h2_data_tail adds the padding. */
void sb_h2_data_head(struct evbuffer *out, const unsigned char *framehd, size_t padlen);
void sb_h2_data_tail(struct evbuffer *out, size_t padlen);

int sb_bev_write_first(struct bufferevent *bev);
void sb_bev_flush(struct bufferevent *bev);

/* Direct reads for a write-first bufferevent whose owner watches the socket with its own
 * persistent EV_READ event instead of enabling EV_READ on the bufferevent: one read(2)
 * of at most SB_BEV_READ_MAX bytes appended to the bufferevent's input, without the
 * FIONREAD ioctl libevent makes before every read. Returns the bytes read, 0 at EOF,
 * SB_BEV_READ_AGAIN when there is nothing to read now (EAGAIN, EINTR), -1 on an error
 * (errno set). Calls no callback: the owner runs its read or event callback from the
 * result. */
#define SB_BEV_READ_MAX 16384
#define SB_BEV_READ_AGAIN (-2)
long sb_bev_read(struct bufferevent *bev);

/* One sb_bev_read of |bev|, then what the bufferevent would have called: |readcb| when
 * bytes came, |eventcb| with BEV_EVENT_EOF or BEV_EVENT_ERROR (| BEV_EVENT_READING) when
 * the peer closed or the read failed, nothing when there was nothing to read. Either
 * callback may free |arg|. The callbacks run as one clock chain (sb_clock_chain_begin). */
void sb_bev_read_dispatch(struct bufferevent *bev, bufferevent_data_cb readcb,
                          bufferevent_event_cb eventcb, void *arg);

/* A part of an HTTP head (a URL, a header name or value) that http_parser may hand over
 * in several pieces, kept as a span pointing into the chunk being parsed while it can
 * be (both HTTP/1 codecs: the common head, read whole, is copied only into the header
 * list). sb_span_take takes the piece |at|, |len|: it extends the span |*d|, |*dlen|
 * when the piece continues it, or starts it when it is unset and |may_start| (nothing
 * of the part was copied aside yet), and returns 1; else 0, and the caller copies the
 * span and the piece into its own buffer. */
static inline int sb_span_take(const char **d, size_t *dlen, int may_start, const char *at,
                               size_t len)
{
    if (*d != NULL && at == *d + *dlen) {
        *dlen += len;
        return 1;
    }
    if (*d == NULL && may_start) {
        *d = at;
        *dlen = len;
        return 1;
    }
    return 0;
}

#endif
