/*
 * handler_metrics.c — GET /metrics (public, SPEC §2, §5.1).
 *
 * Renders the registry of metrics.c in Prometheus text format 0.0.4 on the worker that
 * received the scrape. The server (for the per-worker gauges) is reached through the
 * request's worker, so nothing global needs wiring. A scrape never touches Redis: every
 * value is in memory, so /metrics answers even while Redis is down (and says so in
 * switchboard_redis_up).
 *
 * Never: require a token (Prometheus scrapes without one; restrict /metrics at the
 * network level instead), or let a scrape be cached by an intermediary.
 */
#include "switchboard/handlers.h"
#include "switchboard/alloc.h"
#include "switchboard/metrics.h"
#include "switchboard/server.h"

#include <event2/buffer.h>

void sb_handle_metrics(sb_request *req)
{
    struct evbuffer *body = sb_evbuffer_new();
    sb_metrics_render(body, req->worker != NULL ? req->worker->server : NULL);
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Cache-Control", "no-store");
    sb_response_send(req, 200, &h, SB_METRICS_CONTENT_TYPE, body);
    sb_headers_clear(&h);
    evbuffer_free(body);
}
