/*
 * http1.h — the HTTP/1.1 server codec (libhttp-parser on bufferevents).
 *
 * One sb_http1 connection per accepted socket: keep-alive, pipelined requests answered
 * strictly in order, Content-Length and chunked bodies, Expect: 100-continue, limits on
 * header bytes (--max-header-bytes → 431) and body bytes (--max-body-bytes → 413),
 * timeouts for idle keep-alive connections (--idle-timeout-s) and for slow clients that
 * dribble a request (--request-timeout-s → 408), bounded output (reading pauses while a
 * slow reader has more than a high-water mark queued). Malformed input gets 400 and the
 * connection is closed after the answer.
 *
 * Each complete request becomes an sb_request handed to sb_router_dispatch(), never
 * from inside a parser callback; the codec holds a reference across the call.
 * A connection starting with the HTTP/2 prior-knowledge preface, or a TLS connection
 * whose ALPN agreed on "h2", is handed over to the HTTP/2 codec (http2.h) before any
 * request is parsed; it then leaves w->conns (w->nconns keeps counting it there).
 */
#ifndef SWITCHBOARD_HTTP1_H
#define SWITCHBOARD_HTTP1_H

#include <event2/util.h>
#include <sys/socket.h>

#include "switchboard/worker.h"

struct bufferevent;

/* Takes ownership of |bev| (an accepted, non-blocking connection, plain or TLS, on
 * w's event base, created with BEV_OPT_CLOSE_ON_FREE so freeing it closes the socket;
 * bytes already in its input buffer are parsed too) and serves HTTP/1.1 on it until
 * either side closes. The connection is linked into w->conns (a list private to this
 * codec) and counted in w->nconns until it is freed; each request it parses is counted
 * in w->inflight until answered or abandoned. Reads w->cfg: max_body_bytes,
 * max_header_bytes, idle_timeout_s, request_timeout_s (<= 0 disables a timeout).
 * |peer| is a printable "ip:port" (copied; truncated to 63 bytes). If w->draining is
 * already set the connection behaves as after sb_http1_shutdown. Never fails (OOM
 * aborts). Must run on w's thread, like every function here. */
void sb_http1_conn_new(sb_worker *w, struct bufferevent *bev, const char *peer);

/* Graceful stop for worker |w|: idle connections close now (once their output is
 * flushed); a request partly received is still read to its end; busy connections close
 * after their in-flight responses are written, the last one carrying Connection: close.
 * No further request is read. Safe to call more than once. */
void sb_http1_shutdown(sb_worker *w);

/* Forced stop: closes every connection of |w| now, detaching in-flight requests (their
 * on_gone hooks run) and dropping unwritten output. Afterwards w->nconns is 0. */
void sb_http1_close_all(sb_worker *w);

#endif
