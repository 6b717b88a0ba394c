/*
 * deliver.h — delivering one validated A2A request to its workspace (SPEC §4.2, §4.3).
 *
 * The decision runs in the fixed order of the contract — no_endpoint, poll_mode,
 * lease_expired, circuit_open, busy (the last two from circuit.h) — and otherwise pushes
 * to the registered URL with exactly the headers of §4.2. A push succeeds when the agent
 * answers 2xx with a JSON-RPC response (a JSON-RPC error included); its status and body
 * are relayed unchanged with X-Delivery-Mode: push. Anything else becomes exactly one
 * reason of the closed list (reason.h). Every decision is logged as one line (§5.4).
 *
 * A send (message/send, message/stream, SendMessage, SendStreamingMessage) that is not
 * pushed is appended to the workspace's poll queue (queue.h) before the caller hears
 * anything, and answered HTTP 200 with X-Delivery-Mode: poll, X-Delivery-Reason and an A2A
 * Task in state submitted (task.h); a stream request gets that answer as one SSE event.
 * When the queue cannot take it (Redis down), the answer is HTTP 503 with Retry-After and
 * a JSON-RPC error -32050 whose data names the reason: never a 200 for a message that
 * was neither delivered nor stored.
 *
 * Other methods (tasks/get for an agent's task, ...) are not messages and are not
 * queued: when they cannot be pushed they are answered HTTP 502 with X-Delivery-Reason
 * and a JSON-RPC error -32050 naming the reason. tasks/get and tasks/cancel for a task id
 * switchboard issued are answered from switchboard's own state (task.h), never pushed.
 *
 * The push itself (headers, outcome classification, decision log) is shared with the
 * recovery drain (drain.h), so a drained message reaches the agent exactly as a pushed one.
 */
#ifndef SWITCHBOARD_DELIVER_H
#define SWITCHBOARD_DELIVER_H

#include "switchboard/a2a.h"
#include "switchboard/reason.h"
#include "switchboard/request.h"

struct sb_endpoint;
struct sb_upstream_result;

/* Delivers |call| (ownership taken: released when done) for |req| to workspace |ws|.
 * |source| is the sender ("platform" for chat, the token's workspace for delegation).
 * Answers |req| exactly once (unless the client has gone). */
void sb_deliver(sb_request *req, const char *ws, sb_message_kind kind, const char *source,
                sb_a2a_call *call);

/* The headers of a push to |ep| (SPEC §4.2), as a borrowed list (headers.h: items
 * only, no text) in |ph|: Content-Type, Authorization: Bearer <inbound secret>,
 * X-Switchboard-Message-Id, -Source, -Kind (|kind| "chat" or "delegation"), A2A-Version
 * when |a2a_version| is not NULL, and X-Switchboard-User when |user| is not NULL (callers
 * pass it for chats only). Nothing is allocated or copied but the Authorization value,
 * kept in |ph|. |ph->list| is valid while |ph| and the strings passed live; the upstream
 * request copies what it sends (sb_upstream_submit), so a push builds its headers once.
 * Wipe |ph| with sb_deliver_push_headers_wipe when done (it holds the inbound secret). */
typedef struct sb_deliver_push_hdrs {
    sb_headers list;
    sb_header items[7];
    char auth[256];  /* "Bearer <inbound secret>" */
    size_t auth_len; /* bytes of |auth| written, its NUL included (what the wipe clears) */
} sb_deliver_push_hdrs;
void sb_deliver_push_headers_view(sb_deliver_push_hdrs *ph, const struct sb_endpoint *ep,
                                  const char *message_id, const char *source, const char *kind,
                                  const char *a2a_version, const char *user);
void sb_deliver_push_headers_wipe(sb_deliver_push_hdrs *ph);

/* Sends one push of |body| (drained) with |headers| to |ep|'s URL over the worker pool
 * |pool|, in the protocol |ep| registered (auto, http1, h2c); |cb|(|arg|) runs exactly once,
 * later, from the loop (upstream.h). Drained pushes leave from here; a normal push takes
 * the same path inside deliver.c, with the request's body referenced, not drained (it
 * stays whole for a fallback). */
struct sb_upstream_pool;
struct sb_upstream_req;
struct sb_upstream_req *sb_deliver_push(struct sb_upstream_pool *pool, const struct sb_endpoint *ep,
                                        const sb_headers *headers, struct evbuffer *body,
                                        void (*cb)(const struct sb_upstream_result *res, void *arg),
                                        void *arg);

/* Judges a push outcome: SB_REASON_NONE when the agent answered 2xx with a JSON-RPC
 * response (or an event stream), else the fallback reason, with one line for operators
 * in |detail| (capacity |cap|) naming |url| and the status. |answer| may be NULL; else
 * it says where the response's result or error is, found while judging the body
 * (sb_a2a_answer_member), or has n 0 when the body must be read with jansson to know (an
 * event stream, a body the scanner does not read, a failure). */
sb_reason sb_deliver_classify(const struct sb_upstream_result *res, const char *url, char *detail,
                              size_t cap, sb_a2a_answer *answer);

/* How long a message falling back now stays queued, in ms (SPEC §4.3): the smaller of
 * the queue TTL |queue_ttl_s| (--queue-ttl-s; <= 0 counts as 1 s) and |expires_in_s|
 * (params.metadata.expires_in_s as sb_a2a_parse gives it; <= 0 means none), both
 * bounded by SB_A2A_EXPIRES_MAX_S. Never overflows, for any inputs. */
int64_t sb_deliver_ttl_ms(long queue_ttl_s, long expires_in_s);

/* The SPEC §5.2 record of a pushed message from what was stored (deliver.c keeps
 * {"source","kind","at","status","ms","detail"}; a whole record, as older versions
 * stored it, is returned as it is). |ws| and |message_id| are the lookup's. Never NULL
 * (aborts on OOM); the caller owns the result. */
json_t *sb_deliver_pushed_record(const json_t *stored, const char *ws, const char *message_id);

/* One push attempt of a delivery record (SPEC §5.2) as JSON text, written without a tree:
 * {"at","outcome","reason","detail","http_status","duration_ms"} and "drained":true last
 * when |drained|. |outcome| "delivered" or "failed", |reason| NONE (null) when
 * delivered, |detail| NULL for "" (outside text: repaired to valid UTF-8), |http_status|
 * 0 for none (null). The one writer of an attempt: the queue stores it, the drain's
 * records append it, a pushed message's record parses it. A new NUL-terminated heap
 * string (sb_free); never NULL. */
char *sb_deliver_attempt_text(int64_t at_ms, const char *outcome, sb_reason reason,
                              const char *detail, int http_status, double duration_ms, int drained);

/* One delivery decision line (SPEC §5.4): event "delivery" with time, message_id,
 * workspace, kind, source, method, mode, reason (null for a push), detail, duration_ms,
 * http_status when > 0, task_id and queue_id when |task_id| is set (a queued message),
 * duplicate: true when |duplicate|, drained: true when |drained|, and the fields of
 * |extra| (an object, stolen; may be NULL). */
typedef struct sb_decision {
    const char *message_id;
    const char *workspace;
    const char *kind;
    const char *source;
    const char *method;
    const char *mode; /* "push", "poll" or "rejected" */
    sb_reason reason;
    const char *detail;
    int http_status;
    double duration_ms;
    const char *task_id; /* with queue_id: the queued message's, or NULL */
    const char *queue_id;
    int duplicate; /* the queue answered with an earlier copy */
    int drained;   /* a recovery drain's push: "drained": true */
} sb_decision;

void sb_deliver_log(const sb_decision *dc, json_t *extra);

/* Graceful stop, on a worker thread whose --shutdown-timeout-s ran out: cancels every
 * push of this thread still waiting for its agent and falls each message back to the
 * queue (reason response_timeout, attempted) — nothing accepted is dropped by a stop.
 * Event streams already relayed end where they are. The queue appends complete
 * asynchronously: keep the loop running until the worker's in-flight count drops. */
void sb_deliver_abort_inflight(void);

/* Pushes of this worker thread waiting for their agent (a caller that went away does
 * not end them: the graceful stop waits for these too). */
size_t sb_deliver_inflight(void);

#endif
