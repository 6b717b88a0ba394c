/*
 * http2.h — the HTTP/2 server codec (nghttp2 on bufferevents).
 *
 * One sb_http2 connection per client connection that speaks HTTP/2: h2c with prior
 * knowledge on --listen (http1.c sees the client preface and hands the connection
 * over) and "h2" agreed by ALPN on --tls-listen. Each stream becomes an sb_request
 * handed to sb_router_dispatch() once its request is complete — the same objects and
 * the same router as HTTP/1.1 — and the request layer's send_head/send_data/send_end
 * become HEADERS and DATA frames. Response bodies are framed as they are written, so
 * a streamed (SSE) relay leaves event by event.
 *
 * Limits: --max-body-bytes (413, then RST_STREAM NO_ERROR), --max-header-bytes and at
 * most 100 header fields per request (431), at most 128 concurrent streams per
 * connection (SETTINGS_MAX_CONCURRENT_STREAMS; more are refused by nghttp2), request
 * completion within --request-timeout-s (408), --idle-timeout-s without open streams
 * (GOAWAY, then close), bounded output (reading pauses while a slow reader has more than
 * a high-water mark queued), and a bound on RST_STREAM frames from the client
 * (rapid-reset floods, CVE-2023-44487: GOAWAY ENHANCE_YOUR_CALM and close).
 *
 * Connections are linked into w->h2conns (private to http2.c) and counted in
 * w->nconns, the count the graceful stop waits on, alongside HTTP/1.1 connections.
 * Every function here must run on w's thread.
 */
#ifndef SWITCHBOARD_HTTP2_H
#define SWITCHBOARD_HTTP2_H

#include "switchboard/worker.h"

struct bufferevent;

/* Takes ownership of |bev| (an accepted, non-blocking connection, plain or TLS, on w's
 * event base, created with BEV_OPT_CLOSE_ON_FREE) and serves HTTP/2 on it. Bytes
 * already in its input buffer — normally the client connection preface, which must
 * still be there — are processed from the event loop, never inside this call: the
 * caller may still be running a callback of |bev| and may keep using its buffers until
 * it returns. The server's SETTINGS are queued at once. The connection is counted in
 * w->nconns until it is freed; each request in w->inflight until answered or abandoned.
 * Reads w->cfg: max_body_bytes, max_header_bytes, idle_timeout_s, request_timeout_s
 * (<= 0 disables a timeout). |peer| is a printable "ip:port" (copied, truncated to 63
 * bytes). If w->draining is already set the connection behaves as after
 * sb_http2_shutdown. Never fails (OOM aborts). */
void sb_http2_conn_new(sb_worker *w, struct bufferevent *bev, const char *peer);

/* Graceful stop for worker |w|: every HTTP/2 connection gets a GOAWAY shutdown notice
 * and a PING; when the PING is answered (or after one second) the final GOAWAY names
 * the last stream that will be served. Streams up to it complete normally; the
 * connection closes once they are done and the output is flushed. Safe to call more
 * than once. */
void sb_http2_shutdown(sb_worker *w);

/* Forced stop: closes every HTTP/2 connection of |w| now, detaching in-flight requests
 * (their on_gone hooks run) and dropping unwritten output. Afterwards w->h2conns is
 * NULL and w->nconns no longer counts any HTTP/2 connection. */
void sb_http2_close_all(sb_worker *w);

#endif
