/*
 * http2_int.h — private to the HTTP/2 server codec (http2.c, http2_callbacks.c): its
 * limits, the connection and stream records, and the calls between the two files. Not
 * a module interface: callers use http2.h. Every function declared here starts with h2_;
 * everything else stays static in its file.
 */
#ifndef SWITCHBOARD_HTTP2_INT_H
#define SWITCHBOARD_HTTP2_INT_H

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/http2.h"
#include "switchboard/request.h"

#define H2_MAX_STREAMS 128             /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define H2_MAX_HEADERS 100             /* header fields per request */
#define H2_STREAM_WINDOW (256u << 10)  /* SETTINGS_INITIAL_WINDOW_SIZE (request bodies) */
#define H2_CONN_WINDOW (4u << 20)      /* connection receive window */
#define H2_BODY_BUDGET_MIN (8u << 20)  /* stored bodies not yet taken by a handler */
#define H2_OUT_HIGH (512u << 10)       /* output bytes above which we stop */
#define H2_OUT_LOW (64u << 10)         /* ... and below which we resume */
#define H2_RECV_SLICE 16384            /* input bytes per nghttp2_session_mem_recv */
#define H2_RST_MAX 100                 /* RST_STREAM frames from the client ... */
#define H2_RST_WINDOW_US 1000000u      /* ... per this window before GOAWAY */
#define H2_LIB_RST_BURST 1000          /* nghttp2's own reset token bucket */
#define H2_LIB_RST_RATE 33             /* tokens per second */
#define H2_MAX_SEND_HEADER_BLOCK 65536 /* response header block we will encode */
#define H2_MAX_CONTINUATIONS 8         /* CONTINUATION frames per header block */
#define H2_DRAIN_GRACE_S 1             /* shutdown notice → final GOAWAY at the latest */
#define H2_DISCARD_MAX (256u << 10)    /* request bytes read and dropped after an early answer */
#define H2_STACK_NV 24                 /* response header fields built on the stack */

/* The opaque data of the PING that follows the shutdown notice. */
extern const uint8_t h2_drain_ping[8];

typedef struct h2_conn h2_conn;
typedef struct h2_stream h2_stream;

struct h2_stream {
    h2_conn *conn;
    h2_stream *prev, *next; /* the connection's streams, oldest first */
    h2_stream *ready_next;  /* ready queue */
    h2_stream *reap_next;   /* reap queue */
    int32_t id;
    sb_request *req;      /* the codec's reference */
    struct evbuffer *out; /* response body bytes not yet framed */
    char *authority;      /* :authority until the header block ends */
    size_t head_bytes;    /* header list size, RFC 9113 accounting */
    unsigned nheaders;
    size_t body_counted;      /* body bytes counted in conn->body_buffered */
    size_t unconsumed;        /* body bytes whose stream window we hold back */
    long long remaining;      /* response body bytes still owed (content-length), -1: open */
    long long content_length; /* the request's, -1: not given */
    size_t body_seen;         /* request body bytes received, kept or not */
    size_t discarded;         /* bytes dropped while waiting for END_STREAM after an answer */
    uint64_t deadline_us;
    int fail_status; /* a refusal to answer instead of dispatching (413, 431, 408) */
    const char *fail_code;
    const char *fail_msg;
    unsigned in_ready : 1;
    unsigned in_reap : 1;
    unsigned dispatched : 1;
    unsigned req_complete : 1; /* END_STREAM received */
    unsigned is_head : 1;
    unsigned head_sent : 1;
    unsigned no_body : 1;    /* the response ended with its HEADERS */
    unsigned end : 1;        /* send_end seen */
    unsigned deferred : 1;   /* the data source answered NGHTTP2_ERR_DEFERRED */
    unsigned closed : 1;     /* nghttp2 closed the stream */
    unsigned answered : 1;   /* a refusal was answered */
    unsigned discarding : 1; /* answered early: reading the rest of the request to drop it */
};

typedef enum { T_NONE = 0, T_IDLE, T_REQUEST } h2_timer_mode;

struct h2_conn {
    h2_conn *prev, *next; /* worker->h2conns */
    sb_worker *w;
    const sb_config *cfg;
    struct bufferevent *bev;
    nghttp2_session *session;
    struct event timer; /* the three events live inside the connection record */
    struct event drain_timer;
    struct event flush_ev;
    h2_timer_mode timer_mode;
    char peer[64];

    h2_stream *first, *last; /* every live stream, oldest first */
    size_t nstreams;
    h2_stream *ready_head, *ready_tail;
    h2_stream *reap_head;

    size_t body_buffered; /* stored request body bytes not yet taken by a handler */
    size_t body_budget;

    uint64_t rst_window_start;
    unsigned rst_count;

    unsigned depth;             /* nesting of entry points */
    unsigned closing : 1;       /* free at the outermost conn_leave */
    unsigned dropping : 1;      /* freeing: codec ops are no-ops */
    unsigned stopping : 1;      /* graceful stop began (shutdown notice sent) */
    unsigned goaway_final : 1;  /* the final GOAWAY was submitted */
    unsigned flooded : 1;       /* rapid-reset bound hit: ignore the rest */
    unsigned out_blocked : 1;   /* output above H2_OUT_HIGH (until below H2_OUT_LOW) */
    unsigned in_recv : 1;       /* inside conn_recv */
    unsigned reading : 1;       /* EV_READ enabled */
    unsigned flush_pending : 1; /* flush_ev is active */
    unsigned write_first : 1;   /* plain socket: conn_leave writes the output (sb_bev_flush) */
};

/* ---- http2.c ---- */

struct evbuffer *h2_conn_output(h2_conn *c);
/* Queues |s| (complete, or refused) for dispatch outside nghttp2. */
void h2_ready_push(h2_conn *c, h2_stream *s);
/* A new stream |id| of |c|, linked last. */
h2_stream *h2_stream_new(h2_conn *c, int32_t id);
/* The oldest stream still receiving its request body, or NULL. */
h2_stream *h2_oldest_receiving(h2_conn *c);
/* Gives back the body budget |s| holds. */
void h2_stream_uncount_body(h2_conn *c, h2_stream *s);
/* Refuses the request of |s| with |status| instead of dispatching it. */
void h2_stream_fail(h2_conn *c, h2_stream *s, int status, const char *code, const char *msg);
/* Submits the final GOAWAY (the last stream we took). */
void h2_conn_final_goaway(h2_conn *c);

/* ---- http2_callbacks.c ---- */

/* Creates c->session from the shared templates (made on first use). Aborts on OOM. */
void h2_session_new(h2_conn *c);
/* The data source of response bodies (NGHTTP2_DATA_FLAG_NO_COPY from s->out). */
ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                     uint32_t *data_flags, nghttp2_data_source *source, void *user_data);

#endif
