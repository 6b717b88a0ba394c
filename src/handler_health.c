/*
 * handler_health.c — liveness and readiness (public routes).
 *
 * /healthz answers 200 as long as the loop runs. /readyz answers 200 only while this
 * worker's Redis connection is up and the registry/token replica has been loaded on
 * the current sync connection — an instance that cannot store a fallback or may hold
 * a stale registry should not receive traffic from a load balancer. Both bodies carry
 * "redis": whether that Redis can lose queued messages (redis_safety.h) — a warning for
 * the operator, never a reason to be unready.
 */
#include "switchboard/handlers.h"
#include "switchboard/redis.h"
#include "switchboard/redis_safety.h"
#include "switchboard/worker.h"
#include "switchboard/sync.h"

void sb_handle_healthz(sb_request *req)
{
    sb_response_json(req, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

void sb_handle_readyz(sb_request *req)
{
    int redis_up = req->worker && sb_redis_is_up(req->worker->redis);
    int synced = sb_sync_ready();
    if (redis_up && synced) {
        sb_response_json(req, 200,
                         json_pack("{s:s,s:o}", "status", "ready", "redis", sb_redis_safety_json()),
                         NULL);
        return;
    }
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Retry-After", "1");
    json_t *body = json_pack("{s:{s:s,s:s},s:o}", "error", "code", "not_ready", "message",
                             !redis_up ? "Redis is not connected"
                                       : "the registry replica is not loaded from Redis yet",
                             "redis", sb_redis_safety_json());
    sb_response_json(req, 503, body, &h);
    sb_headers_clear(&h);
}
