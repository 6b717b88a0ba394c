/*
 * notify.c — push notifications for switchboard's tasks (see notify.h).
 *
 * One watched task is one "job" at a time: claim (a script on the workspace's due set
 * and the task's notification hash, so two instances never handle the same task at
 * once), read the task's record (sb_queue_get) and its notification hash, decide, POST
 * to every config in parallel, then write back what was notified and when to look
 * again, releasing the claim. A claim left by a crashed instance lapses after
 * CLAIM_MS. Jobs are bounded (MAX_JOBS per process): past that the sweep waits for the
 * next tick, and kicks fall back to the sweep.
 *
 * Lifecycle: sb_notify_start arms worker 0's tick; sb_notify_stop disarms it and marks
 * the module stopping, after which a job whose Redis reply or notification arrives
 * frees itself without starting anything (the loop's Redis and upstream pool are about
 * to go). Jobs run on the loop of the worker that started them and use its pools.
 *
 * Never: send a notification for a state already notified (the hash's "last"), show
 * stored credentials in an answer, log a token or credentials, or mix the global index
 * sb:{sb}:pnws into a script.
 */
#include "switchboard/notify.h"
#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/netaddr.h"
#include "switchboard/queue.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"
#include "switchboard/task.h"
#include "switchboard/upstream.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TICK_MS 1000
#define CLAIM_MS 30000           /* a claimed task is ours for this long */
#define CLAIM_MAX 20             /* tasks claimed per workspace per tick */
#define SWEEP_WS_MAX 500         /* workspaces looked at per tick */
#define MAX_JOBS 256             /* jobs in flight per process */
#define IDLE_MIN_MS 1000         /* an unchanged task is looked at again after ... */
#define IDLE_MAX_MS 30000        /* ... between these, growing with the time it sat still */
#define RETRY_MAX_MS 300000      /* back-off bound between failed notifications */
#define INDEX_KEY "sb:{sb}:pnws" /* ZSET ws -> last registration ms (single-key commands) */
#define PN_FMT "sb:{%s}:pn:%s"
#define DUE_FMT "sb:{%s}:pndue"

static struct event *g_tick;
static sb_worker *g_tick_worker;
static int g_stopping;
static int g_jobs; /* touched only on the loops' threads; a relaxed counter is enough */

static int jobs_add(int d)
{
    return __atomic_add_fetch(&g_jobs, d, __ATOMIC_RELAXED);
}

/* ---- configs ---- */

static const json_t *config_object(const json_t *request)
{
    const json_t *conf = json_object_get(json_object_get(request, "params"), "configuration");
    const json_t *c = json_object_get(conf, "taskPushNotificationConfig");
    if (!json_is_object(c))
        c = json_object_get(conf, "pushNotificationConfig");
    return json_is_object(c) ? c : NULL;
}

/* 1 when |s| may go into a header value: 1..1024 bytes of visible ASCII or space (a
 * CR or LF from a caller's config must never split the notification's request head). */
static int header_safe(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 1024)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* Normalizes one config as given (v0.3 or v1.0 shape) into |out|'s form. A token,
 * scheme or credentials that could not be sent as a header value are left out. */
static json_t *normalize(const json_t *c, const char *default_id)
{
    const char *url = json_string_value(json_object_get(c, "url"));
    if (url == NULL || url[0] == '\0')
        return NULL;
    const char *id = json_string_value(json_object_get(c, "id"));
    json_t *n = json_object();
    json_object_set_new(n, "id", json_string(id != NULL && id[0] != '\0' ? id : default_id));
    json_object_set_new(n, "url", json_string(url));
    const char *token = json_string_value(json_object_get(c, "token"));
    if (header_safe(token))
        json_object_set_new(n, "token", json_string(token));
    const json_t *auth = json_object_get(c, "authentication");
    const char *scheme = json_string_value(json_object_get(auth, "scheme"));
    if (scheme == NULL)
        scheme = json_string_value(json_array_get(json_object_get(auth, "schemes"), 0));
    const char *cred = json_string_value(json_object_get(auth, "credentials"));
    if (header_safe(scheme) && header_safe(cred) && strchr(scheme, ' ') == NULL) {
        json_object_set_new(n, "scheme", json_string(scheme));
        json_object_set_new(n, "credentials", json_string(cred));
    }
    return n;
}

json_t *sb_notify_config_of(const json_t *request, const char *task_id)
{
    const json_t *c = config_object(request);
    return c ? normalize(c, task_id) : NULL;
}

/* A config as the caller's version shows it, credentials left out. */
static json_t *config_view(const json_t *n, const char *task_id, sb_a2a_version v)
{
    const char *scheme = json_string_value(json_object_get(n, "scheme"));
    json_t *c = json_object();
    json_object_set(c, "id", json_object_get(n, "id"));
    json_object_set(c, "url", json_object_get(n, "url"));
    if (json_object_get(n, "token") != NULL)
        json_object_set(c, "token", json_object_get(n, "token"));
    if (v == SB_A2A_V10) {
        json_object_set_new(c, "taskId", json_string(task_id));
        if (scheme != NULL)
            json_object_set_new(c, "authentication", json_pack("{s:s}", "scheme", scheme));
        return c;
    }
    if (scheme != NULL)
        json_object_set_new(c, "authentication", json_pack("{s:[s]}", "schemes", scheme));
    return json_pack("{s:s,s:o}", "taskId", task_id, "pushNotificationConfig", c);
}

/* ---- registering a task ---- */

/* KEYS: pn hash, due set. ARGV: version, config id, config JSON, retain ms, due ms. */
static const char register_lua[] =
    "redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c:' .. ARGV[2], ARGV[3])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[4])\n"
    "if not redis.call('ZSCORE', KEYS[2], ARGV[6]) then\n"
    "  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[4])\n"
    "return 1\n";

static void on_logged_reply(redisReply *rep, void *arg)
{
    const char *what = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "notify_store_failed", "%s: %s", what, rep->str);
}

static void index_workspace(sb_redis *r, const char *ws)
{
    char now[32];
    snprintf(now, sizeof(now), "%lld", (long long)sb_now_wall_ms());
    const char *argv[] = {"ZADD", INDEX_KEY, now, ws};
    sb_redis_command_argv(r, on_logged_reply, (void *)"indexing a watched workspace", 4, argv,
                          NULL);
}

static int store_config(sb_redis *r, const char *ws, const char *qid, sb_a2a_version v,
                        const json_t *config, int64_t retain_ms, int64_t due_ms)
{
    char pn[SB_WS_ID_MAX + 64], due[SB_WS_ID_MAX + 32], retain[32], when[32];
    snprintf(pn, sizeof(pn), PN_FMT, ws, qid);
    snprintf(due, sizeof(due), DUE_FMT, ws);
    snprintf(retain, sizeof(retain), "%lld", (long long)(retain_ms > 0 ? retain_ms : 86400000));
    snprintf(when, sizeof(when), "%lld", (long long)due_ms);
    char *text = json_dumps(config, JSON_COMPACT);
    const char *args[] = {pn,
                          due,
                          v == SB_A2A_V10 ? "1.0" : "0.3",
                          json_string_value(json_object_get(config, "id")),
                          text,
                          retain,
                          when,
                          qid};
    int rc = sb_redis_eval(r, sb_redis_script_get(NULL, register_lua), 2, 8, args, on_logged_reply,
                           (void *)"storing a notification config");
    sb_free(text);
    if (rc == SB_OK)
        index_workspace(r, ws);
    return rc;
}

void sb_notify_register(sb_worker *w, const char *ws, const char *task_id, sb_a2a_version v,
                        const json_t *config, int64_t retain_ms)
{
    char qid[32];
    if (config == NULL || sb_queue_id_from_task(task_id, qid) != SB_OK)
        return;
    if (store_config(w->redis, ws, qid, v, config, retain_ms, sb_now_wall_ms() + IDLE_MIN_MS) !=
        SB_OK)
        sb_log(SB_LOG_WARN, "notify_not_registered",
               "workspace %s: task %s will get no push notifications (Redis unreachable)", ws,
               task_id);
}

/* ---- the job: claim, read, decide, notify, write back ---- */

typedef struct job job;

typedef struct sending {
    job *j;
    json_t *config; /* borrowed from j->configs */
    sb_url url;
    int ok;
    char detail[384];
    int http_status;
    sb_reason reason;
    double ms;
} sending;

struct job {
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
    char qid[32];
    char task_id[40];
    int terminal;           /* the state read is final */
    int followup;           /* "working" told first; the state read comes next */
    int gone;               /* the task's record is gone: stop watching */
    char state[16];         /* v0.3 name of the state read */
    char last[16];          /* last state notified */
    int fails;              /* failed rounds for |state| so far */
    int64_t still_since_ms; /* when the record last changed */
    sb_a2a_version v;
    json_t *payload; /* the notification body */
    json_t *configs; /* array of normalized configs */
    sending *sends;
    size_t nsends, pending;
};

/* KEYS: due set. ARGV: now, claim ms, max, pn key prefix, only id (or ""). Returns the
 * claimed ids. A task whose hash holds a live claim is skipped. */
static const char claim_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "local ids\n"
    "if ARGV[5] ~= '' then\n"
    "  if not redis.call('ZSCORE', KEYS[1], ARGV[5]) then return {} end\n"
    "  ids = {ARGV[5]}\n"
    "else\n"
    "  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "end\n"
    "local out = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  local k = ARGV[4] .. id\n"
    "  local c = tonumber(redis.call('HGET', k, 'claim') or '0')\n"
    "  if c <= now then\n"
    "    redis.call('HSET', k, 'claim', now + tonumber(ARGV[2]))\n"
    "    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)\n"
    "    out[#out + 1] = id\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS: pn hash, due set. ARGV: id, next due ms (or "" to stop watching), last state
 * (or "" to keep), fails, clear hint (1/0). */
static const char release_lua[] = "redis.call('HDEL', KEYS[1], 'claim')\n"
                                  "if ARGV[5] == '1' then redis.call('HDEL', KEYS[1], 'hint') end\n"
                                  "if ARGV[3] ~= '' then\n"
                                  "  redis.call('HSET', KEYS[1], 'last', ARGV[3])\n"
                                  "end\n"
                                  "redis.call('HSET', KEYS[1], 'fails', ARGV[4])\n"
                                  "if ARGV[2] == '' then\n"
                                  "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
                                  "else\n"
                                  "  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
                                  "end\n"
                                  "return 1\n";

static void claim(sb_worker *w, const char *ws, const char *only);

static void job_free(job *j)
{
    for (size_t i = 0; i < j->nsends; i++)
        sb_url_clear(&j->sends[i].url);
    sb_free(j->sends);
    json_decref(j->payload);
    json_decref(j->configs);
    sb_free(j);
    jobs_add(-1);
}

static void release(job *j, int64_t next_ms, const char *last, int clear_hint)
{
    char pn[SB_WS_ID_MAX + 64], due[SB_WS_ID_MAX + 32], next[32], fails[16];
    snprintf(pn, sizeof(pn), PN_FMT, j->ws, j->qid);
    snprintf(due, sizeof(due), DUE_FMT, j->ws);
    if (next_ms > 0)
        snprintf(next, sizeof(next), "%lld", (long long)next_ms);
    else
        next[0] = '\0';
    snprintf(fails, sizeof(fails), "%d", j->fails);
    const char *args[] = {pn, due, j->qid, next, last ? last : "", fails, clear_hint ? "1" : "0"};
    if (!g_stopping)
        sb_redis_eval(j->w->redis, sb_redis_script_get(NULL, release_lua), 2, 7, args,
                      on_logged_reply, (void *)"releasing a watched task");
    job_free(j);
}

/* When to look at an unchanged task again: soon after a change, rarely after long calm. */
static int64_t idle_next(const job *j)
{
    int64_t now = sb_now_wall_ms();
    int64_t still = j->still_since_ms > 0 && now > j->still_since_ms ? now - j->still_since_ms : 0;
    int64_t gap = still / 10;
    if (gap < IDLE_MIN_MS)
        gap = IDLE_MIN_MS;
    if (gap > IDLE_MAX_MS)
        gap = IDLE_MAX_MS;
    return now + gap;
}

static int64_t retry_next(int fails)
{
    int64_t gap = 1000;
    for (int i = 1; i < fails && gap < RETRY_MAX_MS; i++)
        gap *= 2;
    return sb_now_wall_ms() + (gap > RETRY_MAX_MS ? RETRY_MAX_MS : gap);
}

static void on_attempt_added(int err, const sb_queue_record *rec, void *arg)
{
    (void)rec;
    (void)arg;
    if (err != SB_OK && err != SB_ERR_NOTFOUND && err != SB_ERR_UNAVAILABLE)
        sb_log(SB_LOG_WARN, "notify_record_failed", "a notification attempt was not recorded");
}

/* The attempt added to the task's delivery record (SPEC §5.2). */
static void record_attempt(job *j, const sending *s)
{
    json_t *a = json_object();
    json_object_set_new(a, "at_ms", json_integer(sb_now_wall_ms()));
    json_object_set_new(a, "outcome", json_string(s->ok ? "notified" : "notification_failed"));
    json_object_set_new(a, "reason",
                        s->reason == SB_REASON_NONE ? json_null()
                                                    : json_string(sb_reason_name(s->reason)));
    json_object_set_new(a, "detail", sb_json_text(s->detail));
    json_object_set_new(a, "http_status",
                        s->http_status > 0 ? json_integer(s->http_status) : json_null());
    json_object_set_new(a, "duration_ms", json_real(s->ms));
    json_object_set_new(a, "state", json_string(j->state));
    char *text = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    sb_queue_opts o = sb_queue_opts_of(j->w->cfg);
    sb_queue_add_attempt(j->w->redis, &o, j->ws, j->qid, text, NULL, NULL, on_attempt_added, NULL);
    sb_free(text);
}

static void round_done(job *j)
{
    int ok = 1;
    for (size_t i = 0; i < j->nsends; i++) {
        const sending *s = &j->sends[i];
        if (!g_stopping)
            record_attempt(j, s);
        sb_metrics_notification(s->ok ? "delivered" : "failed");
        json_t *f = json_object();
        json_object_set_new(f, "workspace", json_string(j->ws));
        json_object_set_new(f, "task_id", json_string(j->task_id));
        json_object_set_new(f, "state", json_string(j->state));
        json_object_set_new(f, "outcome", json_string(s->ok ? "notified" : "failed"));
        json_object_set_new(f, "detail", sb_json_text(s->detail));
        sb_log_fields(s->ok ? SB_LOG_INFO : SB_LOG_WARN, "notification", f);
        ok = ok && s->ok;
    }
    if (ok && j->followup) { /* the settled state comes next, at once */
        sb_worker *w = j->w;
        char ws[SB_WS_ID_MAX + 1], qid[32];
        snprintf(ws, sizeof(ws), "%s", j->ws);
        snprintf(qid, sizeof(qid), "%s", j->qid);
        j->fails = 0;
        release(j, sb_now_wall_ms(), j->state, 1);
        if (!g_stopping)
            claim(w, ws, qid);
        return;
    }
    if (ok) {
        j->fails = 0;
        release(j, j->terminal ? 0 : idle_next(j), j->state, 1);
        return;
    }
    if (++j->fails >= SB_NOTIFY_MAX_FAILS) {
        sb_metrics_notification("gave_up");
        sb_log(SB_LOG_WARN, "notification_gave_up",
               "workspace %s task %s: state %s not notified after %d tries", j->ws, j->task_id,
               j->state, j->fails);
        j->fails = 0;
        release(j, j->terminal ? 0 : idle_next(j), j->state, 1);
        return;
    }
    release(j, retry_next(j->fails), NULL, 0);
}

static void on_sent(const sb_upstream_result *res, void *arg)
{
    sending *s = arg;
    job *j = s->j;
    s->ms = (double)res->duration_us / 1000.0;
    const char *url = json_string_value(json_object_get(s->config, "url"));
    if (res->reason != SB_REASON_NONE) {
        s->reason = res->reason;
        snprintf(s->detail, sizeof(s->detail), "notify POST %s (%s) failed: %s: %s", url, j->state,
                 sb_reason_name(res->reason), res->detail);
    } else {
        s->http_status = res->status;
        s->ok = res->status / 100 == 2;
        if (!s->ok)
            s->reason = res->status == 404   ? SB_REASON_HTTP_404
                        : res->status >= 500 ? SB_REASON_HTTP_5XX
                                             : SB_REASON_HTTP_OTHER;
        snprintf(s->detail, sizeof(s->detail), "notify POST %s (%s) → %d", url, j->state,
                 res->status);
    }
    if (--j->pending == 0)
        round_done(j);
}

static void send_all(job *j)
{
    size_t n = json_array_size(j->configs);
    j->sends = sb_calloc(n ? n : 1, sizeof(*j->sends));
    j->nsends = n;
    j->pending = n;
    char *body_text = json_dumps(j->payload, JSON_COMPACT);
    for (size_t i = 0; i < n; i++) {
        sending *s = &j->sends[i];
        s->j = j;
        s->config = json_array_get(j->configs, i);
        const char *url = json_string_value(json_object_get(s->config, "url"));
        if (sb_url_parse(url, &s->url) != SB_OK) {
            /* Checked when stored; an unparseable one fails like a refused address. */
            s->reason = SB_REASON_UPSTREAM_FORBIDDEN;
            snprintf(s->detail, sizeof(s->detail), "notify URL is not an http(s) URL");
            j->pending--;
            continue;
        }
        sb_headers h;
        sb_headers_init(&h);
        sb_headers_add(&h, "Content-Type",
                       j->v == SB_A2A_V10 ? "application/a2a+json" : "application/json");
        const char *token = json_string_value(json_object_get(s->config, "token"));
        if (token != NULL)
            sb_headers_add(&h, "X-A2A-Notification-Token", token);
        const char *scheme = json_string_value(json_object_get(s->config, "scheme"));
        const char *cred = json_string_value(json_object_get(s->config, "credentials"));
        char auth[1024];
        if (scheme != NULL && cred != NULL) {
            snprintf(auth, sizeof(auth), "%s %s", scheme, cred);
            sb_headers_add(&h, "Authorization", auth);
        }
        struct evbuffer *body = evbuffer_new();
        evbuffer_add(body, body_text, strlen(body_text));
        sb_upstream_send_opts o = {.method = "POST", .response_timeout_ms = SB_NOTIFY_TIMEOUT_MS};
        sb_upstream_submit(j->w->upstream, &s->url, &h, body, &o, on_sent, s);
        evbuffer_free(body);
        sb_headers_clear(&h);
    }
    sb_free(body_text);
    if (j->pending == 0)
        round_done(j); /* nothing could be sent */
}

/* The state a record stands for, as v0.3 names it. */
static const char *state_of(const sb_queue_record *rec, const char *hint)
{
    switch (rec->state) {
    case SB_QSTATE_QUEUED:
        return hint != NULL && strcmp(hint, "working") == 0 ? "working" : "submitted";
    case SB_QSTATE_LEASED:
        return "working";
    case SB_QSTATE_ACKED:
        return rec->error != NULL ? "failed" : "completed";
    case SB_QSTATE_DEAD:
        return "failed";
    default:
        return "canceled";
    }
}

typedef struct read_ctx {
    job *j;
    sb_queue_record rec; /* owned copy of what the payload needs */
    int have_rec;
} read_ctx;

static void decide(job *j, const redisReply *h, const sb_queue_record *rec)
{
    const char *hint = NULL;
    j->configs = json_array();
    for (size_t i = 0; h != NULL && i + 1 < h->elements; i += 2) {
        const char *k = h->element[i]->str, *val = h->element[i + 1]->str;
        if (k == NULL || val == NULL)
            continue;
        if (strncmp(k, "c:", 2) == 0) {
            json_t *c = json_loads(val, 0, NULL);
            if (json_is_object(c))
                json_array_append_new(j->configs, c);
            else
                json_decref(c);
        } else if (strcmp(k, "last") == 0) {
            snprintf(j->last, sizeof(j->last), "%s", val);
        } else if (strcmp(k, "fails") == 0) {
            j->fails = atoi(val);
        } else if (strcmp(k, "hint") == 0) {
            hint = val;
        } else if (strcmp(k, "v") == 0) {
            j->v = strcmp(val, "1.0") == 0 ? SB_A2A_V10 : SB_A2A_V03;
        }
    }
    const char *st = state_of(rec, hint);
    /* Leased (or pushed) and settled again before this job read it: "working" was
     * true in between, so it is told first and the settled state right after. */
    if (hint != NULL && strcmp(hint, "working") == 0 && strcmp(st, "working") != 0 &&
        strcmp(st, "submitted") != 0 && strcmp(j->last, "working") != 0 &&
        json_array_size(j->configs) > 0) {
        j->followup = 1;
        st = "working";
    }
    snprintf(j->state, sizeof(j->state), "%s", st);
    j->terminal =
        strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "canceled") == 0;
    j->still_since_ms = rec->updated_at_ms > 0 ? rec->updated_at_ms : rec->enqueued_at_ms;
    if (json_array_size(j->configs) == 0 || strcmp(st, "submitted") == 0 ||
        strcmp(st, j->last) == 0) {
        /* Nothing new to say: watch on, or stop when it is over. */
        release(j, j->terminal || json_array_size(j->configs) == 0 ? 0 : idle_next(j), NULL,
                hint != NULL);
        return;
    }
    json_t *task = sb_task_from_record(rec, j->v, 0);
    if (j->followup) {
        json_t *status = json_object();
        json_object_set_new(status, "state",
                            json_string(j->v == SB_A2A_V10 ? "TASK_STATE_WORKING" : "working"));
        json_object_set_new(status, "timestamp", sb_json_iso8601(sb_now_wall_ms()));
        json_object_set_new(task, "status", status);
        json_object_del(task, "artifacts");
    }
    if (j->v == SB_A2A_V10) {
        j->payload = json_object();
        json_object_set_new(j->payload, "task", task);
    } else {
        j->payload = task;
    }
    send_all(j);
}

static void on_hash(redisReply *rep, void *arg)
{
    read_ctx *c = arg;
    job *j = c->j;
    if (rep == NULL || g_stopping || rep->type != REDIS_REPLY_ARRAY) {
        sb_queue_record_clear(&c->rec);
        sb_free(c);
        job_free(j); /* the claim lapses; the sweep tries again */
        return;
    }
    decide(j, rep, &c->rec);
    sb_queue_record_clear(&c->rec);
    sb_free(c);
}

/* Keeps what the payload and the decision need from a borrowed record. */
static void copy_record(sb_queue_record *dst, const sb_queue_record *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->id = src->id ? sb_strdup(src->id) : NULL;
    dst->task_id = src->task_id ? sb_strdup(src->task_id) : NULL;
    dst->context_id = src->context_id ? sb_strdup(src->context_id) : NULL;
    dst->version = src->version;
    dst->state = src->state;
    dst->reason = src->reason;
    dst->detail = src->detail ? sb_strdup(src->detail) : NULL;
    dst->delivery_count = src->delivery_count;
    dst->enqueued_at_ms = src->enqueued_at_ms;
    dst->updated_at_ms = src->updated_at_ms;
    dst->dead_reason = src->dead_reason ? sb_strdup(src->dead_reason) : NULL;
    dst->result = src->result ? sb_strdup(src->result) : NULL;
    dst->error = src->error ? sb_strdup(src->error) : NULL;
}

static void on_record(int err, const sb_queue_record *rec, void *arg)
{
    job *j = arg;
    if (g_stopping || err == SB_ERR_UNAVAILABLE) {
        job_free(j);
        return;
    }
    if (err == SB_ERR_NOTFOUND) { /* purged or expired: nothing more to tell */
        release(j, 0, NULL, 1);
        return;
    }
    if (err != SB_OK && err != SB_ERR_FORBIDDEN) {
        release(j, retry_next(1), NULL, 0);
        return;
    }
    read_ctx *c = sb_calloc(1, sizeof(*c));
    c->j = j;
    copy_record(&c->rec, rec);
    char pn[SB_WS_ID_MAX + 64];
    snprintf(pn, sizeof(pn), PN_FMT, j->ws, j->qid);
    const char *argv[] = {"HGETALL", pn};
    if (sb_redis_command_argv(j->w->redis, on_hash, c, 2, argv, NULL) != SB_OK) {
        sb_queue_record_clear(&c->rec);
        sb_free(c);
        job_free(j);
    }
}

static void job_start(sb_worker *w, const char *ws, const char *qid)
{
    job *j = sb_calloc(1, sizeof(*j));
    jobs_add(1);
    j->w = w;
    snprintf(j->ws, sizeof(j->ws), "%s", ws);
    snprintf(j->qid, sizeof(j->qid), "%s", qid);
    snprintf(j->task_id, sizeof(j->task_id), "%s%s", SB_QUEUE_TASK_PREFIX,
             qid + strlen(SB_QUEUE_ID_PREFIX));
    sb_queue_opts o = sb_queue_opts_of(w->cfg);
    if (sb_queue_get(w->redis, &o, ws, qid, on_record, j) != SB_OK)
        job_free(j);
}

typedef struct claim_call {
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
} claim_call;

static void on_claimed(redisReply *rep, void *arg)
{
    claim_call *c = arg;
    if (rep != NULL && !g_stopping && rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < rep->elements; i++)
            if (rep->element[i]->type == REDIS_REPLY_STRING &&
                sb_queue_valid_id(rep->element[i]->str))
                job_start(c->w, c->ws, rep->element[i]->str);
    } else if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        sb_log(SB_LOG_WARN, "notify_claim_failed", "workspace %s: %s", c->ws, rep->str);
    }
    sb_free(c);
}

/* Claims due tasks of |ws| (or only |only| when not NULL) and starts a job for each. */
static void claim(sb_worker *w, const char *ws, const char *only)
{
    char due[SB_WS_ID_MAX + 32], prefix[SB_WS_ID_MAX + 32], now[32], claim_ms[16], max[16];
    snprintf(due, sizeof(due), DUE_FMT, ws);
    snprintf(prefix, sizeof(prefix), "sb:{%s}:pn:", ws);
    snprintf(now, sizeof(now), "%lld", (long long)sb_now_wall_ms());
    snprintf(claim_ms, sizeof(claim_ms), "%d", CLAIM_MS);
    snprintf(max, sizeof(max), "%d", CLAIM_MAX);
    claim_call *c = sb_calloc(1, sizeof(*c));
    c->w = w;
    snprintf(c->ws, sizeof(c->ws), "%s", ws);
    const char *args[] = {due, now, claim_ms, max, prefix, only ? only : ""};
    if (sb_redis_eval(w->redis, sb_redis_script_get(NULL, claim_lua), 1, 6, args, on_claimed, c) !=
        SB_OK)
        sb_free(c);
}

typedef struct watching_call {
    void (*cb)(int watched, void *arg);
    void *arg;
} watching_call;

static void on_watching(redisReply *rep, void *arg)
{
    watching_call *c = arg;
    c->cb(rep != NULL && rep->type == REDIS_REPLY_INTEGER ? rep->integer > 0 : -1, c->arg);
    sb_free(c);
}

int sb_notify_watching(sb_worker *w, const char *ws, void (*cb)(int watched, void *arg), void *arg)
{
    char due[SB_WS_ID_MAX + 32];
    snprintf(due, sizeof(due), DUE_FMT, ws);
    watching_call *c = sb_calloc(1, sizeof(*c));
    c->cb = cb;
    c->arg = arg;
    const char *argv[] = {"ZCARD", due};
    if (sb_redis_command_argv(w->redis, on_watching, c, 2, argv, NULL) != SB_OK) {
        sb_free(c);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

/* KEYS: pn hash. ARGV: hint. Sets the hint only on a watched task. */
static const char hint_lua[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
                               "redis.call('HSET', KEYS[1], 'hint', ARGV[1])\n"
                               "return 1\n";

void sb_notify_task_state(sb_worker *w, const char *ws, const char *task_id, const char *hint)
{
    char qid[32];
    if (g_stopping || w == NULL || sb_queue_id_from_task(task_id, qid) != SB_OK ||
        jobs_add(0) >= MAX_JOBS)
        return;
    if (hint != NULL) {
        char pn[SB_WS_ID_MAX + 64];
        snprintf(pn, sizeof(pn), PN_FMT, ws, qid);
        const char *args[] = {pn, hint};
        sb_redis_eval(w->redis, sb_redis_script_get(NULL, hint_lua), 1, 2, args, NULL, NULL);
    }
    claim(w, ws, qid); /* same connection, both scripts: runs after the hint is set */
}

/* ---- the sweep ---- */

static void on_index(redisReply *rep, void *arg)
{
    sb_worker *w = arg;
    if (rep == NULL || g_stopping || rep->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < rep->elements && jobs_add(0) < MAX_JOBS; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING &&
            sb_valid_workspace_id(rep->element[i]->str))
            claim(w, rep->element[i]->str, NULL);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sb_worker *w = arg;
    if (g_stopping || w->draining || !sb_redis_is_up(w->redis) || jobs_add(0) >= MAX_JOBS)
        return;
    /* Workspaces idle past the retention have nothing watched any more. */
    char old[32], max[16];
    snprintf(old, sizeof(old), "%lld",
             (long long)(sb_now_wall_ms() - (int64_t)w->cfg->queue_ttl_s * 1000 - 86400000LL));
    snprintf(max, sizeof(max), "%d", SWEEP_WS_MAX - 1);
    const char *trim[] = {"ZREMRANGEBYSCORE", INDEX_KEY, "-inf", old};
    sb_redis_command_argv(w->redis, NULL, NULL, 4, trim, NULL);
    const char *argv[] = {"ZREVRANGE", INDEX_KEY, "0", max};
    sb_redis_command_argv(w->redis, on_index, w, 4, argv, NULL);
}

static void on_task_changed(sb_worker *w, const char *ws, const char *task_id)
{
    sb_notify_task_state(w, ws, task_id, NULL);
}

void sb_notify_start(sb_worker *w)
{
    sb_task_on_change(on_task_changed);
    g_stopping = 0;
    g_tick_worker = w;
    g_tick = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    struct timeval tv = {TICK_MS / 1000, (TICK_MS % 1000) * 1000};
    event_add(g_tick, &tv);
}

void sb_notify_stop(void)
{
    g_stopping = 1;
    if (g_tick != NULL) {
        event_free(g_tick);
        g_tick = NULL;
    }
    g_tick_worker = NULL;
}

/* ---- the config methods on switchboard's tasks ---- */

enum { OP_SET, OP_GET, OP_LIST, OP_DELETE };

static int config_op(const char *method)
{
    static const struct {
        const char *name;
        int op;
    } ops[] = {{"tasks/pushNotificationConfig/set", OP_SET},
               {"tasks/pushNotificationConfig/get", OP_GET},
               {"tasks/pushNotificationConfig/list", OP_LIST},
               {"tasks/pushNotificationConfig/delete", OP_DELETE},
               {"CreateTaskPushNotificationConfig", OP_SET},
               {"GetTaskPushNotificationConfig", OP_GET},
               {"ListTaskPushNotificationConfigs", OP_LIST},
               {"ListTaskPushNotificationConfig", OP_LIST},
               {"DeleteTaskPushNotificationConfig", OP_DELETE}};
    /* Asked of every call: the first letter rules out message/send without a call. */
    for (size_t i = 0; method != NULL && i < SB_ARRAY_LEN(ops); i++)
        if (method[0] == ops[i].name[0] && strcmp(method, ops[i].name) == 0)
            return ops[i].op;
    return -1;
}

int sb_notify_is_config_method(const char *method)
{
    return config_op(method) >= 0;
}

const char *sb_notify_config_task(const sb_a2a_call *call)
{
    const json_t *params = json_object_get(call->root, "params");
    const char *t = json_string_value(json_object_get(params, "taskId"));
    return t != NULL ? t : json_string_value(json_object_get(params, "id"));
}

typedef struct api_call {
    sb_request *req; /* holds a reference */
    sb_a2a_call call;
    sb_a2a_version v; /* of the method's name */
    int op;
    char ws[SB_WS_ID_MAX + 1];
    char qid[32];
    char task_id[40];
    json_t *config; /* set: the normalized config */
} api_call;

static void api_free(api_call *a)
{
    json_decref(a->config);
    sb_a2a_call_clear(&a->call);
    sb_request_unref(a->req);
    sb_free(a);
}

static void api_answer(api_call *a, json_t *result)
{
    sb_response_json(a->req, 200, sb_a2a_result_response(a->call.id, result), NULL);
}

static void api_error(api_call *a, int http, int code, const char *message)
{
    sb_headers h;
    sb_headers_init(&h);
    if (http == 503)
        sb_headers_add(&h, "Retry-After", "1");
    sb_response_json(a->req, http, sb_a2a_error_response(a->call.id, code, message, NULL), &h);
    sb_headers_clear(&h);
}

/* The config id a get or delete names: v1.0 params.id beside params.taskId, v0.3
 * params.pushNotificationConfigId; NULL for "the first one". */
static const char *named_config(const api_call *a)
{
    const json_t *params = json_object_get(a->call.root, "params");
    if (json_object_get(params, "taskId") != NULL && a->v == SB_A2A_V10)
        return json_string_value(json_object_get(params, "id"));
    return json_string_value(json_object_get(params, "pushNotificationConfigId"));
}

static void on_api_hash(redisReply *rep, void *arg)
{
    api_call *a = arg;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        api_error(a, 503, SB_JSONRPC_INTERNAL_ERROR,
                  "switchboard cannot read its task state now; retry shortly");
        api_free(a);
        return;
    }
    const char *want = named_config(a);
    json_t *list = json_array();
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *k = rep->element[i]->str;
        if (k == NULL || strncmp(k, "c:", 2) != 0)
            continue;
        if (a->op != OP_LIST && want != NULL && strcmp(k + 2, want) != 0)
            continue;
        json_t *c = json_loads(rep->element[i + 1]->str, 0, NULL);
        if (json_is_object(c))
            json_array_append_new(list, config_view(c, a->task_id, a->v));
        json_decref(c);
    }
    if (a->op == OP_LIST) {
        api_answer(a, a->v == SB_A2A_V10
                          ? json_pack("{s:o,s:s}", "configs", list, "nextPageToken", "")
                          : list);
    } else if (json_array_size(list) == 0) {
        json_decref(list);
        api_error(a, 200, SB_JSONRPC_INVALID_PARAMS, "no such push notification config");
    } else {
        api_answer(a, json_incref(json_array_get(list, 0)));
        json_decref(list);
    }
    api_free(a);
}

static void on_api_deleted(redisReply *rep, void *arg)
{
    api_call *a = arg;
    if (rep == NULL || rep->type != REDIS_REPLY_INTEGER)
        api_error(a, 503, SB_JSONRPC_INTERNAL_ERROR,
                  "switchboard cannot change its task state now; retry shortly");
    else if (rep->integer == 0)
        api_error(a, 200, SB_JSONRPC_INVALID_PARAMS, "no such push notification config");
    else
        api_answer(a, a->v == SB_A2A_V10 ? json_object() : json_null());
    api_free(a);
}

/* The config a set carries: v0.3 params.pushNotificationConfig, v1.0 the params
 * themselves (TaskPushNotificationConfig) or params.config. */
static json_t *set_config(const api_call *a)
{
    const json_t *params = json_object_get(a->call.root, "params");
    const json_t *c = json_object_get(params, "pushNotificationConfig");
    if (!json_is_object(c))
        c = json_object_get(params, "config");
    if (!json_is_object(c))
        c = params;
    return normalize(c, a->task_id);
}

static void on_api_record(int err, const sb_queue_record *rec, void *arg)
{
    api_call *a = arg;
    const sb_identity *who = &a->req->ident;
    int may = err == SB_OK || err == SB_ERR_FORBIDDEN;
    if (may && who->kind != SB_IDENT_ADMIN)
        may = who->kind == SB_IDENT_WORKSPACE && rec->source != NULL &&
              strcmp(who->workspace_id, rec->source) == 0;
    if (err == SB_ERR_UNAVAILABLE ||
        (err != SB_OK && err != SB_ERR_FORBIDDEN && err != SB_ERR_NOTFOUND)) {
        api_error(a, 503, SB_JSONRPC_INTERNAL_ERROR,
                  "switchboard cannot read its task state now; retry shortly");
        api_free(a);
        return;
    }
    if (!may) {
        api_error(a, 200, SB_JSONRPC_TASK_NOT_FOUND, "task not found");
        api_free(a);
        return;
    }
    char pn[SB_WS_ID_MAX + 64];
    snprintf(pn, sizeof(pn), PN_FMT, a->ws, a->qid);
    int rc;
    if (a->op == OP_SET) {
        int64_t retain = (int64_t)a->req->worker->cfg->queue_ttl_s * 1000;
        rc = store_config(a->req->worker->redis, a->ws, a->qid, rec->version, a->config, retain,
                          sb_now_wall_ms());
        if (rc == SB_OK) {
            api_answer(a, config_view(a->config, a->task_id, a->v));
            api_free(a);
            return;
        }
    } else if (a->op == OP_DELETE) {
        const char *id = named_config(a);
        char field[256];
        snprintf(field, sizeof(field), "c:%s", id ? id : a->task_id);
        const char *argv[] = {"HDEL", pn, field};
        rc = sb_redis_command_argv(a->req->worker->redis, on_api_deleted, a, 3, argv, NULL);
    } else {
        const char *argv[] = {"HGETALL", pn};
        rc = sb_redis_command_argv(a->req->worker->redis, on_api_hash, a, 2, argv, NULL);
    }
    if (rc != SB_OK) {
        api_error(a, 503, SB_JSONRPC_INTERNAL_ERROR,
                  "switchboard cannot reach its task store now; retry shortly");
        api_free(a);
    }
}

void sb_notify_answer(sb_request *req, const char *ws, sb_a2a_call *call)
{
    api_call *a = sb_calloc(1, sizeof(*a));
    sb_request_ref(req);
    a->req = req;
    a->call = *call;
    memset(call, 0, sizeof(*call));
    a->op = config_op(a->call.method);
    a->v = strchr(a->call.method, '/') != NULL ? SB_A2A_V03 : SB_A2A_V10;
    snprintf(a->ws, sizeof(a->ws), "%s", ws);
    const char *task = sb_notify_config_task(&a->call);
    if (task == NULL || sb_queue_id_from_task(task, a->qid) != SB_OK) {
        api_error(a, 200, SB_JSONRPC_TASK_NOT_FOUND, "task not found");
        api_free(a);
        return;
    }
    snprintf(a->task_id, sizeof(a->task_id), "%s", task);
    if (a->op == OP_SET) {
        a->config = set_config(a);
        sb_url u;
        if (a->config == NULL ||
            sb_url_parse(json_string_value(json_object_get(a->config, "url")), &u) != SB_OK) {
            api_error(a, 200, SB_JSONRPC_INVALID_PARAMS,
                      "a push notification config needs an absolute http(s) url");
            api_free(a);
            return;
        }
        sb_url_clear(&u);
    }
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    if (sb_queue_get(req->worker->redis, &o, ws, a->qid, on_api_record, a) != SB_OK) {
        api_error(a, 503, SB_JSONRPC_INTERNAL_ERROR,
                  "switchboard cannot reach its task store now; retry shortly");
        api_free(a);
    }
}
