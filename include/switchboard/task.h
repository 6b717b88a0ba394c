/*
 * task.h — the A2A tasks switchboard itself issues for messages it queued (SPEC §4.3).
 *
 * A message that falls back to the poll queue is answered with an A2A Task in state
 * submitted whose id ("sbtask_" + 24 hex) is switchboard's. tasks/get and tasks/cancel
 * (v1.0 GetTask, CancelTask) sent through POST /workspaces/{ws}/a2a for such an id are
 * answered here from the queue record, never pushed to the agent:
 *   queued → submitted, leased → working, acked → completed (with the ack's result; a
 *   drained push that the agent answered with a JSON-RPC error → failed), dead → failed,
 *   canceled → canceled.
 * v0.3 calls get v0.3 shapes ("kind":"task", lower-case states); v1.0 calls get v1.0
 * states (TASK_STATE_SUBMITTED, ...), and a v1.0 send's result wraps the Task as
 * {"task": Task}.
 *
 * Who may read a task: the admin, the target workspace, and the workspace that sent the
 * message; anyone else gets "task not found" (-32001), as for an unknown id, so task ids
 * do not leak whether they exist.
 *
 * Never: push a call for one of these ids to the agent (it has never seen them).
 */
#ifndef SWITCHBOARD_TASK_H
#define SWITCHBOARD_TASK_H

#include <jansson.h>

#include "switchboard/a2a.h"
#include "switchboard/queue.h"
#include "switchboard/request.h"

#define SB_JSONRPC_TASK_NOT_FOUND -32001
#define SB_JSONRPC_TASK_NOT_CANCELABLE -32002

/* 1 when |task_id| carries switchboard's task prefix (whatever follows it). */
int sb_task_is_ours(const char *task_id);

/* Called after this module changed a task's state (a cancel), on the worker's loop; the
 * push notifications (notify.h, which needs this module's task shapes) register it. */
struct sb_worker;
typedef void (*sb_task_changed_fn)(struct sb_worker *w, const char *ws, const char *task_id);
/* Installs |fn| (NULL: none). Call before the workers start. */
void sb_task_on_change(sb_task_changed_fn fn);

/* Appends the A2A Task for |rec| in |v|'s shape as compact JSON text to |b|, its state
 * from rec->state; with |full| 0 the metadata.switchboard object holds exactly
 * {"delivery_mode","reason","detail","queued_at"} (the fallback answer of SPEC §4.3),
 * with |full| 1 also "state", "delivery_count" and, when they apply, "dead_reason",
 * "agent_task_id", "error". Members in that order; outside text passes the UTF-8 gate
 * (jsontext.h). The one place the Task's shape is written. */
struct sb_jbuf;
void sb_task_write(struct sb_jbuf *b, const sb_queue_record *rec, sb_a2a_version v, int full);

/* sb_task_write's Task as a jansson tree, for callers that embed or change it. Never NULL;
 * the caller owns it. */
json_t *sb_task_from_record(const sb_queue_record *rec, sb_a2a_version v, int full);

/* Appends the JSON-RPC response text of a send that fell back to |b|:
 * {"jsonrpc":"2.0","id":|id|,"result":R}, R the Task (v0.3) or {"task": Task} (v1.0); |id|
 * echoed when a string or number, else null. */
void sb_task_send_text(struct sb_jbuf *b, const json_t *id, const sb_queue_record *rec,
                       sb_a2a_version v);

/* Answers |req|, a send that fell back, with sb_task_send_text: as application/json, or
 * with |sse| 1 as one text/event-stream event. Written as text without a tree (the
 * fallback answer is per message). |extra| (may be NULL) is only read during the call. */
void sb_task_send_answer(sb_request *req, const json_t *id, const sb_queue_record *rec,
                         sb_a2a_version v, int sse, const sb_headers *extra);

/* Answers |req| with the JSON-RPC |response| (stolen): as application/json, or with
 * |sse| 1 as text/event-stream holding it as one event ("data: <json>\n\n"). |extra|
 * (may be NULL) is only read during the call. */
void sb_task_respond(sb_request *req, int status, json_t *response, int sse,
                     const sb_headers *extra);

/* Answers tasks/get, tasks/cancel or tasks/resubscribe (v1.0 GetTask, CancelTask,
 * SubscribeToTask) |call| for one of switchboard's task ids, for workspace |ws|, from the
 * queue record (one Redis round trip; two for a cancel). Resubscribe answers one SSE
 * event with the current Task. Takes ownership of |call| (leaves it empty). Answers
 * exactly once unless the client goes away; Redis down → HTTP 503 with Retry-After and
 * a JSON-RPC error -32603. */
void sb_task_answer(sb_request *req, const char *ws, sb_a2a_call *call);

#endif
