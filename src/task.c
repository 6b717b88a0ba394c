/*
 * task.c — switchboard's own A2A tasks: their JSON shapes and the answers to
 * tasks/get and tasks/cancel for the ids it issued (see task.h).
 *
 * Life of a task call: deliver.c notices a task method whose id carries the
 * "sbtask_" prefix and hands the call here; one queue script (get, or get then cancel)
 * reads or changes the record; the callback shapes the answer for the caller's protocol
 * version. A task_call record holds a request reference across the Redis round trips,
 * so a client that went away only turns the answer into a no-op.
 *
 * Never: answer for a task the caller may not see with anything but "not found".
 */
#include "switchboard/task.h"
#include "switchboard/alloc.h"
#include "switchboard/jsontext.h"
#include "switchboard/log.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <string.h>

static sb_task_changed_fn g_on_change;

void sb_task_on_change(sb_task_changed_fn fn)
{
    g_on_change = fn;
}

int sb_task_is_ours(const char *task_id)
{
    return task_id != NULL &&
           strncmp(task_id, SB_QUEUE_TASK_PREFIX, strlen(SB_QUEUE_TASK_PREFIX)) == 0;
}

static const char *state_name(sb_queue_state s, int failed_by_agent, sb_a2a_version v)
{
    static const char *const v03[] = {"submitted", "working", "completed", "failed", "canceled"};
    static const char *const v10[] = {"TASK_STATE_SUBMITTED", "TASK_STATE_WORKING",
                                      "TASK_STATE_COMPLETED", "TASK_STATE_FAILED",
                                      "TASK_STATE_CANCELED"};
    int i = (int)s;
    if ((s == SB_QSTATE_ACKED && failed_by_agent) || s == SB_QSTATE_PURGED)
        i = SB_QSTATE_DEAD; /* an agent's JSON-RPC error, or a purged dead letter: failed */
    return v == SB_A2A_V10 ? v10[i] : v03[i];
}

/* The ack result as a Task or a Message (v1.0 results wrap them as {"task"} or
 * {"message"}). Exactly one of *|task| / *|message| is set (borrowed from |result|), or
 * neither when it is neither. */
static void classify_result(json_t *result, json_t **task, json_t **message)
{
    *task = *message = NULL;
    if (!json_is_object(result))
        return;
    json_t *t = json_object_get(result, "task");
    json_t *m = json_object_get(result, "message");
    if (json_is_object(t)) {
        *task = t;
        return;
    }
    if (json_is_object(m)) {
        *message = m;
        return;
    }
    const char *kind = json_string_value(json_object_get(result, "kind"));
    if ((kind != NULL && strcmp(kind, "task") == 0) ||
        json_is_object(json_object_get(result, "status")))
        *task = result;
    else
        *message = result;
}

#define PUT(b, lit) sb_jbuf_add((b), (lit), sizeof(lit) - 1)

/* A Redis-clock time as an ISO-8601 string, null when unset. */
static void put_time(sb_jbuf *b, int64_t ms)
{
    if (ms <= 0) {
        PUT(b, "null");
        return;
    }
    char t[32];
    sb_format_iso8601(ms, t);
    sb_jbuf_quote(b, t);
}

/* ,"name":<v> — a member of the agent's own JSON, written as it was parsed. */
static void put_member(sb_jbuf *b, const char *name, const json_t *v)
{
    PUT(b, ",");
    sb_jbuf_quote(b, name);
    PUT(b, ":");
    sb_json_write(b, v);
}

void sb_task_write(sb_jbuf *b, const sb_queue_record *rec, sb_a2a_version v, int full)
{
    /* Only an acked or failed task carries the agent's JSON; a queued one (every send's
     * fallback answer) is written without parsing or building anything. */
    json_t *result = rec->result ? json_loads(rec->result, 0, NULL) : NULL;
    json_t *error = rec->error ? json_loads(rec->error, 0, NULL) : NULL;
    json_t *agent_task = NULL, *agent_message = NULL;
    if (rec->state == SB_QSTATE_ACKED)
        classify_result(result, &agent_task, &agent_message);

    PUT(b, "{\"kind\":\"task\",\"id\":");
    sb_jbuf_quote(b, rec->task_id ? rec->task_id : "");
    PUT(b, ",\"contextId\":");
    sb_jbuf_quote(b, rec->context_id ? rec->context_id : "");
    PUT(b, ",\"status\":");
    const json_t *agent_status = agent_task ? json_object_get(agent_task, "status") : NULL;
    if (json_is_object(agent_status)) {
        sb_json_write(b, agent_status);
    } else {
        PUT(b, "{\"state\":");
        sb_jbuf_quote(b, state_name(rec->state, error != NULL, v));
        PUT(b, ",\"timestamp\":");
        put_time(b, rec->state == SB_QSTATE_QUEUED && rec->delivery_count == 0
                        ? rec->enqueued_at_ms
                        : rec->updated_at_ms);
        if (agent_message != NULL)
            put_member(b, "message", agent_message);
        PUT(b, "}");
    }
    if (agent_task != NULL) {
        static const char *const copied[] = {"artifacts", "history"};
        for (size_t i = 0; i < SB_ARRAY_LEN(copied); i++) {
            const json_t *x = json_object_get(agent_task, copied[i]);
            if (x != NULL)
                put_member(b, copied[i], x);
        }
    }

    PUT(b, ",\"metadata\":{\"switchboard\":{\"delivery_mode\":\"poll\",\"reason\":");
    sb_jbuf_quote(b, sb_reason_name(rec->reason));
    PUT(b, ",\"detail\":");
    sb_jbuf_quote(b, rec->detail ? rec->detail : "");
    PUT(b, ",\"queued_at\":");
    put_time(b, rec->enqueued_at_ms);
    if (full) {
        char num[24];
        PUT(b, ",\"state\":");
        sb_jbuf_quote(b, sb_queue_state_name(rec->state));
        PUT(b, ",\"delivery_count\":");
        sb_jbuf_add(b, num, sb_fmt_ll(num, rec->delivery_count));
        if (rec->dead_reason != NULL) {
            PUT(b, ",\"dead_reason\":");
            sb_jbuf_quote(b, rec->dead_reason);
        }
        const char *agent_id =
            agent_task ? json_string_value(json_object_get(agent_task, "id")) : NULL;
        if (agent_id != NULL) {
            PUT(b, ",\"agent_task_id\":");
            sb_jbuf_quote(b, agent_id);
        }
        if (error != NULL)
            put_member(b, "error", error);
    }
    PUT(b, "}}}");
    json_decref(result);
    json_decref(error);
}

json_t *sb_task_from_record(const sb_queue_record *rec, sb_a2a_version v, int full)
{
    char stack[2048];
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    sb_task_write(&b, rec, v, full);
    json_t *task = json_loadb(b.p, b.len, 0, NULL);
    if (b.heap)
        sb_free(b.p);
    if (task == NULL) { /* our own text always parses; only memory can fail */
        sb_log(SB_LOG_ERROR, "task_text", "a task's JSON text did not parse back");
        task = json_object();
    }
    return task;
}

/* The answer's text: "data: <json>\n\n" as one event with |sse|, else the JSON. */
static void respond_text(sb_request *req, int status, const char *text, size_t len, int sse,
                         const sb_headers *extra)
{
    struct evbuffer *body = evbuffer_new();
    if (sse)
        evbuffer_add(body, "data: ", 6);
    evbuffer_add(body, text, len);
    if (!sse) {
        sb_response_send(req, status, extra, "application/json", body);
        evbuffer_free(body);
        return;
    }
    evbuffer_add(body, "\n\n", 2);
    sb_headers h;
    sb_headers_init(&h);
    for (size_t i = 0; extra != NULL && i < extra->count; i++)
        sb_headers_add(&h, extra->items[i].name, extra->items[i].value);
    sb_headers_add(&h, "Cache-Control", "no-cache");
    sb_response_send(req, status, &h, "text/event-stream", body);
    sb_headers_clear(&h);
    evbuffer_free(body);
}

void sb_task_send_text(sb_jbuf *b, const json_t *id, const sb_queue_record *rec, sb_a2a_version v)
{
    PUT(b, "{\"jsonrpc\":\"2.0\",\"id\":");
    sb_json_write(b, json_is_string(id) || json_is_number(id) ? id : NULL);
    PUT(b, ",\"result\":");
    if (v == SB_A2A_V10)
        PUT(b, "{\"task\":");
    sb_task_write(b, rec, v, 0);
    if (v == SB_A2A_V10)
        PUT(b, "}");
    PUT(b, "}");
}

void sb_task_send_answer(sb_request *req, const json_t *id, const sb_queue_record *rec,
                         sb_a2a_version v, int sse, const sb_headers *extra)
{
    char stack[2048];
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    sb_task_send_text(&b, id, rec, v);
    respond_text(req, 200, b.p, b.len, sse, extra);
    if (b.heap)
        sb_free(b.p);
}

void sb_task_respond(sb_request *req, int status, json_t *response, int sse,
                     const sb_headers *extra)
{
    char stack[2048];
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    sb_json_write(&b, response);
    json_decref(response);
    respond_text(req, status, b.p, b.len, sse, extra);
    if (b.heap)
        sb_free(b.p);
}

/* ---- tasks/get, tasks/cancel ---- */

typedef struct task_call {
    sb_request *req; /* holds a reference */
    sb_a2a_call call;
    char ws[SB_WS_ID_MAX + 1];
    char id[32];
} task_call;

static void task_call_free(task_call *t)
{
    sb_a2a_call_clear(&t->call);
    sb_request_unref(t->req);
    sb_free(t);
}

static void answer_error(task_call *t, int http, int code, const char *message, json_t *data)
{
    sb_headers h;
    sb_headers_init(&h);
    if (http == 503)
        sb_headers_add(&h, "Retry-After", "1");
    sb_response_json(t->req, http, sb_a2a_error_response(t->call.id, code, message, data), &h);
    sb_headers_clear(&h);
}

static void answer_not_found(task_call *t)
{
    answer_error(t, 200, SB_JSONRPC_TASK_NOT_FOUND, "task not found", NULL);
}

/* Common failures of a queue call; 1 when one was answered. */
static int answer_failure(task_call *t, int err)
{
    if (err == SB_OK || err == SB_ERR_FORBIDDEN)
        return 0;
    if (err == SB_ERR_NOTFOUND) {
        answer_not_found(t);
    } else {
        json_t *data = json_pack("{s:s}", "error",
                                 err == SB_ERR_UNAVAILABLE ? "redis_unavailable" : "redis_error");
        answer_error(t, 503, SB_JSONRPC_INTERNAL_ERROR,
                     "switchboard cannot read its task state now; retry shortly", data);
    }
    return 1;
}

/* The admin, the target workspace and the sender may see a task. */
static int may_see(const task_call *t, const sb_queue_record *rec)
{
    const sb_identity *who = &t->req->ident;
    if (who->kind == SB_IDENT_ADMIN)
        return 1;
    if (who->kind != SB_IDENT_WORKSPACE)
        return 0;
    return strcmp(who->workspace_id, t->ws) == 0 ||
           (rec->source != NULL && strcmp(who->workspace_id, rec->source) == 0);
}

static void stream_start(task_call *t, const sb_queue_record *rec);

static void answer_task(task_call *t, const sb_queue_record *rec)
{
    if (t->call.kind == SB_A2A_RESUBSCRIBE) {
        stream_start(t, rec);
        return;
    }
    json_t *task = sb_task_from_record(rec, t->call.version, 1);
    sb_task_respond(t->req, 200, sb_a2a_result_response(t->call.id, task), 0, NULL);
}

/* ---- tasks/resubscribe, SubscribeToTask: the task's state changes as an event stream ----
 *
 * The first event is the task as it is; then the record is read every STREAM_POLL_MS
 * and each change of state is one status-update event (v0.3 {"kind":"status-update",
 * ..., "final"}, v1.0 {"statusUpdate": ...}), until a final state (completed, failed,
 * canceled), the caller leaving, or the instance stopping. A comment line every
 * STREAM_KEEPALIVE_MS keeps proxies from timing the stream out. */

#define STREAM_POLL_MS 500
#define STREAM_KEEPALIVE_MS 15000

typedef struct task_stream {
    sb_request *req; /* holds a reference */
    sb_a2a_call call;
    char ws[SB_WS_ID_MAX + 1];
    char id[32];
    struct event *timer;
    int last;          /* state_code of the last event sent */
    int reading;       /* a record read is in flight */
    int over;          /* ended or the caller left: free when not reading */
    uint64_t quiet_us; /* last write, for the keep-alive */
} task_stream;

static int state_code(const sb_queue_record *rec)
{
    return (int)rec->state * 2 + (rec->error != NULL ? 1 : 0);
}

static int state_final(const sb_queue_record *rec)
{
    return rec->state == SB_QSTATE_ACKED || rec->state == SB_QSTATE_DEAD ||
           rec->state == SB_QSTATE_CANCELED;
}

static void stream_free(task_stream *s)
{
    if (s->timer != NULL)
        event_free(s->timer);
    s->req->on_gone = NULL;
    sb_a2a_call_clear(&s->call);
    sb_request_unref(s->req);
    sb_free(s);
}

static void stream_event(task_stream *s, json_t *result)
{
    json_t *response = sb_a2a_result_response(s->call.id, result);
    char *text = json_dumps(response, JSON_COMPACT);
    json_decref(response);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "data: %s\n\n", text ? text : "null");
    sb_free(text);
    sb_response_write(s->req, b);
    evbuffer_free(b);
    s->quiet_us = sb_now_mono_us();
}

/* The event for a change: the status of the task as tasks/get shows it. */
static json_t *status_update(const sb_queue_record *rec, sb_a2a_version v)
{
    json_t *task = sb_task_from_record(rec, v, 0);
    json_t *ev = json_object();
    json_object_set(ev, "taskId", json_object_get(task, "id"));
    json_object_set(ev, "contextId", json_object_get(task, "contextId"));
    json_object_set(ev, "status", json_object_get(task, "status"));
    json_object_set(ev, "metadata", json_object_get(task, "metadata"));
    json_decref(task);
    if (v == SB_A2A_V10)
        return json_pack("{s:o}", "statusUpdate", ev);
    json_object_set_new(ev, "kind", json_string("status-update"));
    json_object_set_new(ev, "final", json_boolean(state_final(rec)));
    return ev;
}

static void stream_end(task_stream *s)
{
    s->over = 1;
    sb_response_end(s->req);
    if (!s->reading)
        stream_free(s);
}

static void on_stream_got(int err, const sb_queue_record *rec, void *arg)
{
    task_stream *s = arg;
    s->reading = 0;
    if (s->over) {
        stream_free(s);
        return;
    }
    if (err == SB_ERR_NOTFOUND) { /* purged: nothing more will happen to it */
        stream_end(s);
        return;
    }
    if ((err == SB_OK || err == SB_ERR_FORBIDDEN) && state_code(rec) != s->last) {
        s->last = state_code(rec);
        stream_event(s, status_update(rec, s->call.version));
        if (state_final(rec)) {
            stream_end(s);
            return;
        }
    }
    struct timeval tv = {0, STREAM_POLL_MS * 1000};
    evtimer_add(s->timer, &tv);
}

static void on_stream_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    task_stream *s = arg;
    if (s->over) { /* the caller left (on_stream_gone) */
        if (!s->reading)
            stream_free(s);
        return;
    }
    if (s->req->worker->draining) {
        stream_end(s);
        return;
    }
    if (sb_now_mono_us() - s->quiet_us > (uint64_t)STREAM_KEEPALIVE_MS * 1000) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, ": keep-alive\n\n");
        sb_response_write(s->req, b);
        evbuffer_free(b);
        s->quiet_us = sb_now_mono_us();
    }
    sb_queue_opts o = sb_queue_opts_of(s->req->worker->cfg);
    s->reading = 1;
    if (sb_queue_get(s->req->worker->redis, &o, s->ws, s->id, on_stream_got, s) != SB_OK) {
        s->reading = 0; /* Redis away: keep the stream, try again */
        struct timeval tv = {0, STREAM_POLL_MS * 1000};
        evtimer_add(s->timer, &tv);
    }
}

static void on_stream_gone(sb_request *req, void *arg)
{
    (void)req;
    task_stream *s = arg;
    /* Possibly from inside one of our own writes: freed from the timer, never here. */
    s->over = 1;
    if (!s->reading)
        event_active(s->timer, EV_TIMEOUT, 1);
}

static void stream_start(task_call *t, const sb_queue_record *rec)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Content-Type", "text/event-stream");
    sb_headers_add(&h, "Cache-Control", "no-cache");
    sb_response_start(t->req, 200, &h);
    sb_headers_clear(&h);
    task_stream *s = sb_calloc(1, sizeof(*s));
    sb_request_ref(t->req);
    s->req = t->req;
    s->call = t->call;
    memset(&t->call, 0, sizeof(t->call));
    snprintf(s->ws, sizeof(s->ws), "%s", t->ws);
    snprintf(s->id, sizeof(s->id), "%s", t->id);
    s->last = state_code(rec);
    json_t *task = sb_task_from_record(rec, s->call.version, 1);
    if (s->call.version == SB_A2A_V10)
        task = json_pack("{s:o}", "task", task);
    else if (state_final(rec)) /* the one event of a finished task says so */
        json_object_set_new(task, "final", json_true());
    stream_event(s, task);
    if (state_final(rec) || sb_request_gone(s->req)) {
        stream_end(s);
        return;
    }
    s->timer = evtimer_new(s->req->worker->base, on_stream_tick, s);
    s->req->on_gone = on_stream_gone;
    s->req->on_gone_arg = s;
    struct timeval tv = {0, STREAM_POLL_MS * 1000};
    evtimer_add(s->timer, &tv);
}

static void log_task_call(const task_call *t, const char *outcome)
{
    json_t *f = json_object();
    json_object_set_new(f, "workspace", sb_json_text(t->ws));
    json_object_set_new(f, "method", sb_json_text(t->call.method ? t->call.method : ""));
    json_object_set_new(f, "task_id", sb_json_text(t->call.task_id ? t->call.task_id : ""));
    json_object_set_new(f, "outcome", json_string(outcome));
    sb_log_fields(SB_LOG_INFO, "task", f);
}

static void on_canceled(int err, const sb_queue_record *rec, void *arg)
{
    task_call *t = arg;
    if (!answer_failure(t, err)) {
        if (err == SB_ERR_FORBIDDEN) {
            json_t *data = json_pack("{s:s}", "state", sb_queue_state_name(rec->state));
            answer_error(t, 200, SB_JSONRPC_TASK_NOT_CANCELABLE,
                         "task cannot be canceled: it is no longer queued", data);
            log_task_call(t, "not_cancelable");
        } else {
            answer_task(t, rec);
            log_task_call(t, "canceled");
            if (g_on_change != NULL)
                g_on_change(t->req->worker, t->ws, rec->task_id);
        }
    }
    task_call_free(t);
}

static void on_got(int err, const sb_queue_record *rec, void *arg)
{
    task_call *t = arg;
    if (answer_failure(t, err)) {
        task_call_free(t);
        return;
    }
    if (!may_see(t, rec)) {
        answer_not_found(t);
        task_call_free(t);
        return;
    }
    if (t->call.kind == SB_A2A_CANCEL_TASK && !sb_request_gone(t->req)) {
        sb_queue_opts o = sb_queue_opts_of(t->req->worker->cfg);
        if (sb_queue_cancel(t->req->worker->redis, &o, t->ws, t->id, on_canceled, t) != SB_OK) {
            answer_failure(t, SB_ERR_UNAVAILABLE);
            task_call_free(t);
        }
        return;
    }
    answer_task(t, rec);
    log_task_call(t, "answered");
    task_call_free(t);
}

void sb_task_answer(sb_request *req, const char *ws, sb_a2a_call *call)
{
    task_call *t = sb_calloc(1, sizeof(*t));
    sb_request_ref(req);
    t->req = req;
    t->call = *call;
    memset(call, 0, sizeof(*call));
    snprintf(t->ws, sizeof(t->ws), "%s", ws);
    if (sb_queue_id_from_task(t->call.task_id, t->id) != SB_OK) {
        answer_not_found(t);
        log_task_call(t, "not_found");
        task_call_free(t);
        return;
    }
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    if (sb_queue_get(req->worker->redis, &o, ws, t->id, on_got, t) != SB_OK) {
        answer_failure(t, SB_ERR_UNAVAILABLE);
        task_call_free(t);
    }
}
