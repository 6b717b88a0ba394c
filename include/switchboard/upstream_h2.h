/*
 * upstream_h2.h — the HTTP/2 client session of the upstream module (nghttp2).
 *
 * Internal to the upstream module: only upstream*.c (and the unit tests) include this.
 * Callers push through upstream.h, which decides per origin whether a request rides an
 * HTTP/1.1 connection or a stream of one of these sessions.
 *
 * One sb_h2c is one HTTP/2 connection seen from the client side. It runs over a
 * bufferevent the owner created and keeps (socket for h2c, OpenSSL after ALPN "h2"):
 * it writes frames into the bufferevent's output and parses its input when the owner
 * says bytes arrived. It knows nothing of pools, origins, DNS, timers or reasons: it
 * reports what happened to each stream, and the owner classifies.
 *
 * Streams are sb_h2c_stream records embedded in the owner's request objects, so a
 * request costs no allocation here beyond nghttp2's own stream state. The owner fills
 * |headers| and |data| (where the response goes), submits, and later hears about the
 * stream through the session's event callback, never from inside nghttp2: events are
 * collected while nghttp2 parses or serializes and delivered after it returned, so the
 * owner may submit, reset or consume from the callback. The callback must not free the
 * session; sb_h2c_read() and sb_h2c_flush() say when the session is over.
 *
 * Flow control: the connection window is handed back as soon as DATA arrives (one slow
 * stream never stalls the others); a stream's window only when the owner says it
 * consumed the bytes (sb_h2c_consume), which is how a paused relay slows one agent
 * stream down without buffering more than the stream window (SB_H2C_STREAM_WINDOW).
 *
 * Never: call the event callback from inside an nghttp2 callback, touch a stream after
 * reporting its END event or after sb_h2c_reset_stream(), or write more than
 * SB_H2C_OUT_HIGH bytes ahead of the socket.
 */
#ifndef SWITCHBOARD_UPSTREAM_H2_H
#define SWITCHBOARD_UPSTREAM_H2_H

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/headers.h"

struct bufferevent;

/* Receive window of each stream we open: what one paused stream may buffer. */
#define SB_H2C_STREAM_WINDOW (256 * 1024)
/* Receive window of the whole connection. */
#define SB_H2C_CONN_WINDOW (16 * 1024 * 1024)
/* Serialized frames are produced only while the bufferevent's output holds less. */
#define SB_H2C_OUT_HIGH (64 * 1024)
/* A response header block larger than this resets the stream (invalid response). */
#define SB_H2C_MAX_HEADER_BYTES (64 * 1024)

typedef struct sb_h2c sb_h2c;
typedef struct sb_h2c_stream sb_h2c_stream;

/* How a stream ended (the END event). */
typedef enum {
    SB_H2C_END_NONE = 0, /* still open */
    SB_H2C_END_COMPLETE, /* END_STREAM after a final response head: a complete answer */
    SB_H2C_END_REFUSED,  /* the agent did not process it: RST_STREAM(REFUSED_STREAM), a
                          * stream id beyond GOAWAY's last one, or never sent. Safe to
                          * send again on another connection. */
    SB_H2C_END_RESET,    /* the agent reset the stream (|error_code|) */
    SB_H2C_END_INVALID,  /* the answer broke HTTP/2 or HTTP rules (|why|) */
    SB_H2C_END_CLOSED    /* the connection ended before the answer completed (|why|) */
} sb_h2c_end;

/* Event bits passed to the session's callback. */
#define SB_H2C_EV_HEAD 1u /* the final response head arrived: |status| and |headers| */
#define SB_H2C_EV_DATA 2u /* body bytes were appended to |data| (|unconsumed| grew) */
#define SB_H2C_EV_END 4u  /* the stream is over (|end|); the session forgot it */

struct sb_h2c_stream {
    /* Set by the owner before sb_h2c_submit; borrowed until the END event or a reset. */
    sb_headers *headers;   /* response headers are appended here (names lower-case) */
    struct evbuffer *data; /* response body bytes are appended here */

    /* Maintained by the session; read-only for the owner. */
    sb_h2c *session;            /* NULL once ended or reset */
    sb_h2c_stream *prev, *next; /* the session's open streams */
    sb_h2c_stream *ev_next;     /* pending-event list */
    struct evbuffer *body;      /* request body, read in place (never drained) */
    size_t body_off;            /* request body bytes handed to nghttp2 */
    int32_t id;                 /* stream id (0 before submit) */
    int status;                 /* final :status, 0 until the head */
    int block_status;           /* :status of the header block being read */
    uint64_t rx_bytes;          /* response bytes received (headers and DATA) */
    size_t unconsumed;          /* DATA bytes not yet given back to the window */
    size_t header_bytes;        /* bytes of the header block being read */
    unsigned events;            /* SB_H2C_EV_* not yet delivered */
    unsigned on_ev_list : 1;    /* linked on the pending-event list */
    unsigned sent : 1;          /* the request HEADERS left */
    unsigned remote_end : 1;    /* END_STREAM received */
    unsigned peer_reset : 1;    /* the agent sent RST_STREAM */
    unsigned in_trailers : 1;   /* reading a trailer block (ignored) */
    sb_h2c_end end;             /* how it ended (with SB_H2C_EV_END) */
    uint32_t error_code;        /* the RST_STREAM / GOAWAY error code */
    const char *why;            /* text for REFUSED, INVALID and CLOSED; valid during
                                 * the END event callback only */
};

/* One request as the owner describes it; read during sb_h2c_submit only, except
 * |body|, which is read in place until the stream ends (it must not change). */
typedef struct sb_h2c_request {
    const char *method;
    const char *scheme;    /* "http" or "https" */
    const char *authority; /* host[:port] */
    const char *path;
    const sb_header *headers; /* already checked: token names, no CR/LF/NUL, no hop-by-hop */
    size_t n_headers;
    long long content_length; /* sent as content-length when >= 0 */
    struct evbuffer *body;    /* NULL or empty: no DATA */
} sb_h2c_request;

/* Called for each stream with pending |events| (SB_H2C_EV_*, any combination, HEAD
 * before DATA before END), never from inside nghttp2. |owner| is sb_h2c_new's. */
typedef void (*sb_h2c_event_fn)(sb_h2c_stream *st, unsigned events, void *owner);

/* Starts a client session on |bev| (connected; TLS done when it is TLS): queues the
 * connection preface and SETTINGS (push disabled, SB_H2C_STREAM_WINDOW per stream) and
 * the connection window update, and writes them to |bev|'s output. |bev| stays the
 * owner's, and so do its callbacks: the owner calls sb_h2c_read when input arrives and
 * sb_h2c_flush when the output drained. Never NULL (allocation failure aborts). */
sb_h2c *sb_h2c_new(struct bufferevent *bev, sb_h2c_event_fn on_event, void *owner);

/* Frees the session. Streams still open are forgotten without events (the owner calls
 * sb_h2c_fail_all first when it wants them reported). Must not be called from the
 * event callback. NULL is a no-op. */
void sb_h2c_free(sb_h2c *s);

/* Submits |rq| on a new stream |st| (zeroed by the owner except headers/data). Returns
 * the stream id (> 0), or -1 when the session takes no new stream (going away, dead,
 * stream ids exhausted): |st| is untouched then. The request is serialized by the next
 * sb_h2c_flush (the caller flushes once after submitting a batch). */
int32_t sb_h2c_submit(sb_h2c *s, sb_h2c_stream *st, const sb_h2c_request *rq);

/* Resets |st| with |error_code| (NGHTTP2_CANCEL for a cancel or a timeout) and forgets
 * it at once: no event follows, and the owner may free the memory around |st| right
 * after sb_h2c_flush. A no-op for a stream that already ended. */
void sb_h2c_reset_stream(sb_h2c_stream *st, uint32_t error_code);

/* The owner consumed |n| body bytes of |st| (<= st->unconsumed): they go back to the
 * stream's flow-control window, so the agent may send that much more. */
void sb_h2c_consume(sb_h2c_stream *st, size_t n);

/* Parses the input of the session's bufferevent, delivers events, and writes what
 * nghttp2 wants to send (acks, window updates). Returns 0 while the session lives, -1
 * when it is over (protocol error, GOAWAY with nothing left in flight, ...): every
 * stream still open has then been reported ended, and the owner closes the connection
 * and frees the session. */
int sb_h2c_read(sb_h2c *s);

/* Serializes pending frames into the output while it holds less than SB_H2C_OUT_HIGH
 * (request bodies copied once, straight from the owner's buffer), on a plain socket
 * writes them from the loop once per turn (sb_bev_flush: EV_WRITE armed only while the
 * socket is full, so the owner's write callback must call this again), and delivers
 * events that
 * serializing produced. Returns 0, or -1 when the session is over (as sb_h2c_read). */
int sb_h2c_flush(sb_h2c *s);

/* Reports every open stream ended: SB_H2C_END_REFUSED when it was never sent or lies
 * beyond the agent's GOAWAY, |how| with |why| (read during the calls only) otherwise.
 * Used when the connection broke (|how| CLOSED) or a session-level error ended it. */
void sb_h2c_fail_all(sb_h2c *s, sb_h2c_end how, const char *why);

/* Queues GOAWAY(NO_ERROR) for an orderly close of an idle session. */
void sb_h2c_shutdown(sb_h2c *s);

/* 1 when a new stream may be submitted now: alive, no GOAWAY either way, ids left, and
 * fewer open streams than the agent's SETTINGS_MAX_CONCURRENT_STREAMS — or than one,
 * before the agent's SETTINGS arrived (a burst sent blind would be refused when its
 * limit is small). */
int sb_h2c_can_submit(const sb_h2c *s);
/* Streams submitted and not yet ended or reset. */
size_t sb_h2c_open_streams(const sb_h2c *s);
/* The agent's SETTINGS_MAX_CONCURRENT_STREAMS as known now (100 until its SETTINGS). */
uint32_t sb_h2c_max_streams(const sb_h2c *s);
/* 1 once the agent's SETTINGS arrived (its stream limit is known). */
int sb_h2c_settled(const sb_h2c *s);
/* 1 once the session is over (see sb_h2c_read). */
int sb_h2c_dead(const sb_h2c *s);
/* Why the session is over or failing: one line, "" when nothing went wrong. */
const char *sb_h2c_error(const sb_h2c *s);
/* 1 when the session ended through a protocol error (the agent broke HTTP/2 or does
 * not speak it), 0 for a plain connection end. */
int sb_h2c_protocol_error(const sb_h2c *s);

#endif
