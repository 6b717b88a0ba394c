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
 * Each complete request becomes an sb_request handed to sb_router_dispatch().
 */
#ifndef SWITCHBOARD_HTTP1_H
#define SWITCHBOARD_HTTP1_H

#include <event2/util.h>
#include <sys/socket.h>

#include "switchboard/server.h"

struct bufferevent;

/* Takes ownership of |bev| (an accepted, non-blocking connection, plain or TLS) and
 * serves HTTP/1.1 on it until either side closes. |peer| is a printable "ip:port". */
void sb_http1_conn_new(sb_worker *w, struct bufferevent *bev, const char *peer);

/* Graceful stop for worker |w|: idle connections close now; busy ones close after
 * their in-flight responses are written. Later requests are not read. */
void sb_http1_shutdown(sb_worker *w);

/* Forced stop: closes every connection of |w| now, detaching in-flight requests. */
void sb_http1_close_all(sb_worker *w);

#endif
