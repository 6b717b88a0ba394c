/*
 * deliver.c — the decision, the push and the poll fallback for one A2A request (see
 * deliver.h).
 *
 * Life of a delivery: sb_deliver() takes a reference on the request, reads the
 * workspace's endpoint from the in-process registry replica (no Redis round trip),
 * applies the decision order — the registry's reasons here, circuit_open and busy from
 * sb_circuit_begin — and either falls back at once or hands the unchanged body to the
 * worker's upstream pool. The pool calls back exactly once; the callback reports the
 * outcome to the circuit breaker, then relays the answer or falls back. A fallback of a
 * send is one queue append (one Redis round trip) whose reply decides the answer: the
 * Task (200) or 503. The delivery record owns everything it needs until its last
 * callback, so nothing here depends on the client connection still existing: a message
 * whose caller went away is still queued (the caller may retry; the queue deduplicates).
 *
 * The body is pushed without a copy: the upstream pool drains an evbuffer that only
 * references the request body's chains, so the original bytes stay available to the
 * queue append that may follow.
 *
 * Never: answer 200 for a message that is neither delivered nor stored, log a token or
 * the inbound secret, or end a circuit-counted push twice.
 */
#include "switchboard/deliver.h"
#include "switchboard/jsontext.h"
#include "switchboard/notify.h"
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/redis.h"
#include "switchboard/registry.h"
#include "switchboard/retry.h"
#include "switchboard/sync.h"
#include "switchboard/worker.h"
#include "switchboard/task.h"
#include "switchboard/upstream.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <event2/event.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#define RETRY_AFTER_S "1"

typedef struct delivery {
    sb_request *req; /* holds a reference */
    sb_a2a_call call;
    sb_endpoint *ep; /* holds a reference while pushing */
    sb_message_kind kind;
    char ws[SB_WS_ID_MAX + 1];
    char source[SB_WS_ID_MAX + 16];
    char message_id[160];
    uint64_t started_us;
    int counted; /* 1 between sb_circuit_begin and sb_circuit_end */
    /* the fallback, once decided */
    sb_reason reason;
    char detail[384];
    int http_status;
    int pushed;                   /* a push was attempted */
    uint64_t push_us;             /* its duration */
    int64_t push_began_ms;        /* wall clock when it began */
    sb_upstream_req *up;          /* the push in flight (to pause, cancel or abort it) */
    struct event *resume_ev;      /* while that push is paused: waits for the client */
    int streaming;                /* the event stream's head went out to the caller */
    int append_sent;              /* the queue append reached Redis's socket */
    int64_t note_at_ms;           /* the fallback note's time, sent with the append */
    struct delivery *prev, *next; /* this worker's pushes in flight */
} delivery;

/* Pushes in flight on this worker thread: a graceful stop that reaches its deadline
 * falls every one of them back to the queue rather than dropping it. Deliveries never
 * leave the worker thread that created them, so the list needs no lock. */
static __thread delivery *inflight;
static __thread size_t ninflight;

static void inflight_link(delivery *d)
{
    d->prev = NULL;
    d->next = inflight;
    if (inflight != NULL)
        inflight->prev = d;
    inflight = d;
    ninflight++;
}

static void inflight_unlink(delivery *d)
{
    if (d->prev == NULL && inflight != d)
        return; /* not linked */
    ninflight--;
    if (d->prev != NULL)
        d->prev->next = d->next;
    else if (inflight == d)
        inflight = d->next;
    if (d->next != NULL)
        d->next->prev = d->prev;
    d->prev = d->next = NULL;
}

static void delivery_free(delivery *d)
{
    inflight_unlink(d);
    if (d->resume_ev != NULL)
        event_free(d->resume_ev);
    if (d->ep != NULL)
        sb_endpoint_release(d->ep);
    sb_a2a_call_clear(&d->call);
    sb_request_unref(d->req);
    sb_free(d);
}

static int is_send(const sb_a2a_call *c)
{
    return c->kind == SB_A2A_SEND || c->kind == SB_A2A_STREAM;
}

static int is_event_stream(const char *content_type)
{
    return content_type != NULL && strncasecmp(content_type, "text/event-stream", 17) == 0;
}

/* ---- shared with the drain ---- */

void sb_deliver_log(const sb_decision *dc, json_t *extra)
{
    sb_log_line l;
    sb_log_begin(&l, dc->reason == SB_REASON_NONE ? SB_LOG_INFO : SB_LOG_WARN, "delivery");
    sb_log_str(&l, "message_id", dc->message_id ? dc->message_id : "");
    sb_log_str(&l, "workspace", dc->workspace);
    sb_log_str(&l, "kind", dc->kind ? dc->kind : "");
    sb_log_str(&l, "source", dc->source ? dc->source : "");
    sb_log_str(&l, "method", dc->method ? dc->method : "");
    sb_log_str(&l, "mode", dc->mode);
    sb_log_str(&l, "reason", dc->reason == SB_REASON_NONE ? NULL : sb_reason_name(dc->reason));
    sb_log_str(&l, "detail", dc->detail ? dc->detail : "");
    if (dc->http_status > 0)
        sb_log_int(&l, "http_status", dc->http_status);
    sb_log_real(&l, "duration_ms", dc->duration_ms);
    if (dc->task_id != NULL) {
        sb_log_str(&l, "task_id", dc->task_id);
        sb_log_str(&l, "queue_id", dc->queue_id ? dc->queue_id : "");
        if (dc->duplicate)
            sb_log_bool(&l, "duplicate", 1);
    }
    if (dc->drained)
        sb_log_bool(&l, "drained", 1);
    sb_log_members(&l, extra);
    sb_log_end(&l);
    json_decref(extra);
}

void sb_deliver_push_headers_view(sb_deliver_push_hdrs *ph, const sb_endpoint *ep,
                                  const char *message_id, const char *source, const char *kind,
                                  const char *a2a_version, const char *user)
{
    size_t slen = strnlen(ep->inbound_secret, sizeof(ph->auth) - 8); /* as snprintf cut it */
    memcpy(ph->auth, "Bearer ", 7);
    memcpy(ph->auth + 7, ep->inbound_secret, slen);
    ph->auth[7 + slen] = '\0';
    ph->auth_len = 7 + slen + 1;
    size_t n = 0;
    /* a borrowed list never writes its strings: const is dropped only for the type */
#define PUT(n_, v_)                                                                                \
    (ph->items[n].name = (char *)(uintptr_t)(n_), ph->items[n++].value = (char *)(uintptr_t)(v_))
    PUT("Content-Type", "application/json");
    PUT("Authorization", ph->auth);
    PUT("X-Switchboard-Message-Id", message_id);
    PUT("X-Switchboard-Source", source);
    PUT("X-Switchboard-Kind", kind);
    if (a2a_version != NULL)
        PUT("A2A-Version", a2a_version);
    if (user != NULL)
        PUT("X-Switchboard-User", user);
#undef PUT
    memset(&ph->list, 0, sizeof(ph->list));
    ph->list.items = ph->items;
    ph->list.count = n;
    ph->list.cap = n;
}

void sb_deliver_push_headers_wipe(sb_deliver_push_hdrs *ph)
{
    OPENSSL_cleanse(ph->auth, ph->auth_len);
}

/* The one place every push leaves from: |ep|'s URL in the protocol it registered, with
 * the caller's other options (a shared body, streaming callbacks). */
static sb_upstream_req *push_submit(sb_upstream_pool *pool, const sb_endpoint *ep,
                                    const sb_headers *headers, struct evbuffer *body,
                                    sb_upstream_send_opts *opts, sb_upstream_cb cb, void *arg)
{
    opts->protocol = ep->protocol;
    return sb_upstream_submit(pool, &ep->url, headers, body, opts, cb, arg);
}

sb_upstream_req *sb_deliver_push(sb_upstream_pool *pool, const sb_endpoint *ep,
                                 const sb_headers *headers, struct evbuffer *body,
                                 sb_upstream_cb cb, void *arg)
{
    sb_upstream_send_opts opts;
    memset(&opts, 0, sizeof(opts));
    return push_submit(pool, ep, headers, body, &opts, cb, arg);
}

/* "POST <url> → <status>" into |detail|: what snprintf writes, without its cost on
 * every delivered message when it fits (it always does but for a huge URL). */
static void push_detail(char *detail, size_t cap, const char *url, int status)
{
    static const char arrow[] = " → ";
    size_t n = strlen(url);
    if (status < 0 || n + sizeof(arrow) + 5 + 24 > cap) {
        snprintf(detail, cap, "POST %s → %d", url, status);
        return;
    }
    memcpy(detail, "POST ", 5);
    memcpy(detail + 5, url, n);
    memcpy(detail + 5 + n, arrow, sizeof(arrow) - 1);
    sb_fmt_ll(detail + 5 + n + sizeof(arrow) - 1, status);
}

sb_reason sb_deliver_classify(const sb_upstream_result *res, const char *url, char *detail,
                              size_t cap, sb_a2a_answer *answer)
{
    sb_a2a_answer none = {0, 0, 0};
    if (answer == NULL)
        answer = &none;
    answer->n = 0;
    if (res->reason != SB_REASON_NONE) {
        snprintf(detail, cap, "%s", res->detail);
        return res->reason;
    }
    sb_reason reason = sb_reason_from_http_status(res->status);
    if (reason != SB_REASON_NONE) {
        snprintf(detail, cap, "POST %s → %d", url, res->status);
        return reason;
    }
    const char *ctype = sb_headers_get(res->headers, "Content-Type");
    if (!is_event_stream(ctype)) {
        size_t len = res->body ? evbuffer_get_length(res->body) : 0;
        const char *bytes = len ? (const char *)evbuffer_pullup(res->body, -1) : "";
        /* the scanner's answer says where the result is too (the drain keeps it); a body
         * it does not read is judged by sb_a2a_is_response's tree reader */
        if (!sb_a2a_answer_member(bytes ? bytes : "", len, answer) &&
            !sb_a2a_is_response(bytes ? bytes : "", len)) {
            snprintf(detail, cap,
                     "POST %s → %d with a body that is not a JSON-RPC response (%zu bytes)", url,
                     res->status, len);
            return SB_REASON_INVALID_RESPONSE;
        }
    }
    push_detail(detail, cap, url, res->status);
    return SB_REASON_NONE;
}

char *sb_deliver_attempt_text(int64_t at_ms, const char *outcome, sb_reason reason,
                              const char *detail, int http_status, double duration_ms, int drained)
{
    char store[512], num[40];
    sb_jbuf b = {store, 0, sizeof(store), 0};
    sb_format_iso8601(at_ms, num); /* ASCII digits and separators: nothing to escape */
    sb_jbuf_add(&b, "{\"at\":\"", 7);
    sb_jbuf_add(&b, num, strlen(num));
    sb_jbuf_add(&b, "\",\"outcome\":", 12);
    sb_jbuf_quote(&b, outcome);
    sb_jbuf_add(&b, ",\"reason\":", 10);
    if (reason == SB_REASON_NONE)
        sb_jbuf_add(&b, "null", 4);
    else
        sb_jbuf_quote(&b, sb_reason_name(reason));
    sb_jbuf_add(&b, ",\"detail\":", 10);
    sb_jbuf_quote(&b, detail ? detail : "");
    sb_jbuf_add(&b, ",\"http_status\":", 15);
    if (http_status > 0)
        sb_jbuf_add(&b, num, sb_fmt_ll(num, http_status));
    else
        sb_jbuf_add(&b, "null", 4);
    sb_jbuf_add(&b, ",\"duration_ms\":", 15);
    sb_jbuf_add(&b, num, sb_json_real(num, duration_ms));
    if (drained)
        sb_jbuf_add(&b, ",\"drained\":true", 15);
    sb_jbuf_add(&b, "}", 2); /* the NUL too */
    return b.heap ? b.p : sb_strndup(b.p, b.len - 1);
}

int64_t sb_deliver_ttl_ms(long queue_ttl_s, long expires_in_s)
{
    /* Compared in seconds first, so no product can overflow whatever the inputs. */
    long s = queue_ttl_s > 0 ? queue_ttl_s : 1;
    if (expires_in_s > 0 && expires_in_s < s)
        s = expires_in_s;
    if (s > SB_A2A_EXPIRES_MAX_S)
        s = SB_A2A_EXPIRES_MAX_S;
    return (int64_t)s * 1000;
}

/* ---- answers ---- */

/* The decision line of |d| (SPEC §5.4); |queued| (may be NULL) is the queue's record of a
 * message that fell back: the line names its task and entry ids. */
static void log_decision_of(const delivery *d, const char *mode, sb_reason reason,
                            const char *detail, int http_status, const sb_queue_record *queued,
                            json_t *extra)
{
    sb_decision dc = {.message_id = d->message_id,
                      .workspace = d->ws,
                      .kind = sb_kind_name(d->kind),
                      .source = d->source,
                      .method = d->call.method,
                      .mode = mode,
                      .reason = reason,
                      .detail = detail,
                      .http_status = http_status,
                      .duration_ms = (double)(sb_chain_mono_us() - d->started_us) / 1000.0,
                      .task_id = queued ? (queued->task_id ? queued->task_id : "") : NULL,
                      .queue_id = queued ? queued->id : NULL,
                      .duplicate = queued ? queued->duplicate : 0};
    sb_deliver_log(&dc, extra);
    sb_metrics_delivery(d->kind, mode, reason); /* once per message, like the line */
}

static void log_decision(const delivery *d, const char *mode, sb_reason reason, const char *detail,
                         int http_status, json_t *extra)
{
    log_decision_of(d, mode, reason, detail, http_status, NULL, extra);
}

/* The decision as a note for the workspace's counters (record.h); |record| (may be NULL)
 * is a pushed message's delivery record. */
static sb_record_note note_of(const delivery *d, sb_note_kind kind, const char *record,
                              size_t record_len)
{
    sb_record_note n = {.ws = d->ws,
                        .kind = kind,
                        .reason = d->reason,
                        .detail = d->detail,
                        .http_status = d->http_status,
                        .pushed = d->pushed,
                        .duration_ms = (double)d->push_us / 1000.0,
                        .at_ms = d->pushed ? d->push_began_ms : sb_chain_wall_ms(),
                        .message_id = d->message_id,
                        .source = d->source,
                        .record_json = record,
                        .record_len = record_len,
                        .retain_ms = (int64_t)d->req->worker->cfg->queue_ttl_s * 1000,
                        .record_retain_ms =
                            (int64_t)d->req->worker->cfg->pushed_record_ttl_s * 1000};
    return n;
}

/* Notes the decision in the workspace's counters after the caller was answered. */
static void note(const delivery *d, sb_note_kind kind, const char *record, size_t record_len)
{
    sb_record_note n = note_of(d, kind, record, record_len);
    sb_record_note_send(d->req->worker->redis, &n);
}

/* A JSON-RPC error -32050 naming the reason: 502 for a call that is not a message (it is
 * not queued), 503 with Retry-After for a message the queue could not take. data.queued
 * is always false (not known to be queued); data.maybe_queued is true when the append
 * was sent but no answer came (Redis hung or the connection dropped): Redis may still
 * have stored it, and a retry with the same messageId returns that task (the queue
 * deduplicates (source, messageId)) instead of queueing it twice. */
static void answer_undelivered(delivery *d, int status, const char *why)
{
    json_t *data = json_object();
    json_object_set_new(data, "reason", json_string(sb_reason_name(d->reason)));
    json_object_set_new(data, "detail", sb_json_text(d->detail));
    json_object_set_new(data, "attempted",
                        json_boolean(d->pushed && sb_reason_attempted(d->reason)));
    json_object_set_new(data, "queued", json_false());
    json_object_set_new(data, "maybe_queued", json_boolean(d->append_sent));
    char msg[320];
    snprintf(msg, sizeof(msg), "message not delivered: %s%s", sb_reason_name(d->reason), why);
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "X-Delivery-Reason", sb_reason_name(d->reason));
    if (status == 503)
        sb_headers_add(&h, "Retry-After", RETRY_AFTER_S);
    sb_response_json(d->req, status,
                     sb_a2a_error_response(d->call.id, SB_JSONRPC_UNDELIVERABLE, msg, data), &h);
    sb_headers_clear(&h);
}

static void on_enqueued(int err, const sb_queue_record *rec, void *arg)
{
    delivery *d = arg;
    if (err != SB_OK) {
        json_t *extra = json_pack("{s:s,s:b}", "queue_error",
                                  err == SB_ERR_UNAVAILABLE ? "redis_unavailable" : "redis_error",
                                  "maybe_queued", d->append_sent);
        log_decision(d, "rejected", d->reason, d->detail, d->http_status, extra);
        answer_undelivered(d, 503,
                           d->append_sent
                               ? " (the poll queue did not confirm it: it may have been queued; "
                                 "retry with the same messageId to get its task)"
                               : " (and the poll queue is unavailable; retry shortly)");
        if (err != SB_ERR_UNAVAILABLE)
            note(d, SB_NOTE_FALLBACK, NULL, 0);
        delivery_free(d);
        return;
    }
    log_decision_of(d, "poll", d->reason, d->detail, d->http_status, rec, NULL);
    if (d->reason != SB_REASON_NO_ENDPOINT && d->reason != SB_REASON_POLL_MODE &&
        d->reason != SB_REASON_LEASE_EXPIRED)
        sb_retry_due_soon(d->req->worker->redis, d->ws); /* a push-mode agent: retry soon */
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "X-Delivery-Mode", "poll");
    /* A duplicate is answered with the first copy's task, reason included. */
    sb_headers_add(&h, "X-Delivery-Reason", sb_reason_name(rec->reason));
    sb_task_send_answer(d->req, d->call.id, rec, d->call.version, d->call.kind == SB_A2A_STREAM,
                        &h);
    sb_headers_clear(&h);
    /* The counters were noted by the append's own script (fall_back); the recent-fallbacks
     * index is on the {sb} slot, a command of its own. */
    sb_record_note_fallback_index(d->req->worker->redis, d->ws, d->note_at_ms);
    /* A send carrying a push-notification config hears from switchboard itself as its
     * task changes state (SPEC §4.3). */
    json_t *config = sb_notify_config_of(d->call.root, rec->task_id);
    if (config != NULL && rec->task_id != NULL)
        sb_notify_register(d->req->worker, d->ws, rec->task_id, d->call.version, config,
                           (int64_t)d->req->worker->cfg->queue_ttl_s * 1000);
    json_decref(config);
    delivery_free(d);
}

/* The SPEC §5.2 attempt of the failed push, as a JSON array text (owned by the caller);
 * NULL when nothing was pushed (the queue stores "[]"). */
static char *attempts_json(const delivery *d)
{
    if (!d->pushed)
        return NULL;
    char *one = sb_deliver_attempt_text(d->push_began_ms, "failed", d->reason, d->detail,
                                        d->http_status, (double)d->push_us / 1000.0, 0);
    size_t n = strlen(one);
    char *text = sb_malloc(n + 3);
    text[0] = '[';
    memcpy(text + 1, one, n);
    memcpy(text + 1 + n, "]", 2);
    sb_free(one);
    return text;
}

/* The message was not pushed for |reason|. Takes ownership of |d|: a send is queued and
 * answered from the append's reply; any other call is answered 502 now. */
static void fall_back(delivery *d, sb_reason reason, const char *detail, int http_status)
{
    d->reason = reason;
    d->http_status = http_status;
    sb_copy_str(d->detail, sizeof(d->detail), detail);
    if (!is_send(&d->call)) {
        log_decision(d, "rejected", reason, d->detail, http_status, NULL);
        answer_undelivered(d, 502, " (only sends are queued)");
        note(d, SB_NOTE_FALLBACK, NULL, 0);
        delivery_free(d);
        return;
    }
    const sb_config *cfg = d->req->worker->cfg;
    int64_t ttl_ms = sb_deliver_ttl_ms(cfg->queue_ttl_s, d->call.expires_in_s);
    size_t len = evbuffer_get_length(d->req->body);
    const char *bytes = len ? (const char *)evbuffer_pullup(d->req->body, -1) : "";
    char *attempts = attempts_json(d);
    sb_queue_msg m = {
        .ws = d->ws,
        .message_id = d->message_id,
        .context_id = d->call.context_id,
        .kind = sb_kind_name(d->kind),
        .source = d->source,
        .method = d->call.method,
        .version = d->call.version,
        .reason = reason,
        .detail = d->detail,
        .attempted = d->pushed && sb_reason_attempted(reason),
        .a2a_version = sb_headers_get(&d->req->headers, "A2A-Version"),
        .user =
            d->kind == SB_KIND_CHAT ? sb_headers_get(&d->req->headers, "X-Switchboard-User") : NULL,
        .attempts = attempts,
        .request = bytes,
        .request_len = len,
        .ttl_ms = ttl_ms,
    };
    /* The note's counters run inside the append's script (record.h), one script per
     * batch of the workspace's fallbacks of this loop turn (queue.h). */
    sb_record_note n = note_of(d, SB_NOTE_FALLBACK, NULL, 0);
    sb_record_note_args na;
    sb_record_note_inline(&n, &na);
    d->note_at_ms = n.at_ms;
    m.after_lua = sb_record_note_after_lua();
    m.after_argv = na.argv;
    m.after_nkeys = na.nkeys;
    m.after_nargs = na.nargs;
    m.before_send = sb_record_notes_send_now;
    sb_queue_opts o = sb_queue_opts_of(cfg);
    int rc = sb_queue_append(d->req->worker->redis, &o, &m, on_enqueued, d);
    sb_free(attempts);
    if (rc == SB_OK)
        d->append_sent = 1; /* on_enqueued runs later, from the loop */
    else
        on_enqueued(SB_ERR_UNAVAILABLE, NULL, d); /* never sent: certainly not queued */
}

/* An extended-card answer is the one body switchboard does not relay byte for byte: the
 * card's interface URLs are pointed at switchboard like the card route's (SPEC §4.1),
 * so callers never learn the agent's direct address. An answer that is not a JSON-RPC
 * result holding an object is left as it came. */
static void rewrite_card_answer(delivery *d, struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    json_t *root = len ? json_loadb((const char *)evbuffer_pullup(body, -1), len, 0, NULL) : NULL;
    json_t *card = json_object_get(root, "result");
    if (json_is_object(card)) {
        char *url = sb_a2a_public_url(sb_headers_get(&d->req->headers, "X-Forwarded-Proto"),
                                      sb_headers_get(&d->req->headers, "Host"),
                                      d->req->worker->cfg->listen, d->ws);
        sb_a2a_card_rewrite(card, url);
        sb_free(url);
        char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (text != NULL) {
            evbuffer_drain(body, len);
            evbuffer_add(body, text, strlen(text));
            sb_free(text);
        }
    }
    json_decref(root);
}

/* Relays the agent's answer unchanged (but for an extended card, above): status, body
 * and the headers that describe the body; hop-by-hop and transport headers stay
 * behind. */
static void relay(delivery *d, const sb_upstream_result *res)
{
    static const char *const kept[] = {"Content-Type", "A2A-Version", "Cache-Control"};
    /* A borrowed list (headers.h): the values stay in res->headers, which outlives the
     * send; sb_response_send writes (or copies) what it sends before it returns. */
    sb_header items[SB_ARRAY_LEN(kept) + 1];
    size_t n = 0;
    for (size_t k = 0; k < SB_ARRAY_LEN(kept); k++) {
        const char *v = sb_headers_get(res->headers, kept[k]);
        if (v != NULL)
            items[n++] =
                (sb_header){.name = (char *)(uintptr_t)kept[k], .value = (char *)(uintptr_t)v};
    }
    items[n++] = (sb_header){.name = (char *)(uintptr_t) "X-Delivery-Mode",
                             .value = (char *)(uintptr_t) "push"};
    sb_headers h = {.items = items, .count = n, .cap = n};
    if (sb_a2a_is_card_method(d->call.method) && res->status / 100 == 2)
        rewrite_card_answer(d, res->body);
    sb_response_send(d->req, res->status, &h, NULL, res->body);
}

/* A delivered message's record as stored (owned by the caller): only what the message
 * does not already say — {"source","kind","at","status","ms","detail"}, "source" first
 * (record.c finds the sender by it) — about a quarter of the SPEC §5.2 text, which the
 * record route rebuilds from it (sb_deliver_pushed_record). Written directly
 * (jsontext.h): this is done for every pushed message. */
static char *put_text(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

static char *pushed_record(const delivery *d, size_t *len)
{
    char at[24], status[24] = "null", dur[40];
    size_t at_len = sb_fmt_ll(at, d->push_began_ms), status_len = 4;
    if (d->http_status > 0)
        status_len = sb_fmt_ll(status, d->http_status);
    size_t dur_len = sb_json_real(dur, (double)d->push_us / 1000.0);
    const char *kind = sb_kind_name(d->kind); /* "chat" or "delegation": nothing to escape */
    size_t source_len = strlen(d->source), detail_len = strlen(d->detail), kind_len = strlen(kind);
    /* the most a quoted text takes: 6 bytes a byte and its quotes */
    size_t need = 128 + at_len + status_len + dur_len + kind_len + 6 * (source_len + detail_len);
    char *out = sb_malloc(need), *o = out;
    o = put_text(o, "{\"source\":", 10);
    o += sb_json_quoten(o, need - (size_t)(o - out), d->source, source_len);
    o = put_text(o, ",\"kind\":\"", 9);
    o = put_text(o, kind, kind_len);
    o = put_text(o, "\"", 1);
    o = put_text(o, ",\"at\":", 6);
    o = put_text(o, at, at_len);
    o = put_text(o, ",\"status\":", 10);
    o = put_text(o, status, status_len);
    o = put_text(o, ",\"ms\":", 6);
    o = put_text(o, dur, dur_len);
    o = put_text(o, ",\"detail\":", 10);
    o += sb_json_quoten(o, need - (size_t)(o - out), d->detail, detail_len);
    o = put_text(o, "}", 2); /* with the NUL */
    *len = (size_t)(o - out) - 1;
    return out;
}

json_t *sb_deliver_pushed_record(const json_t *stored, const char *ws, const char *message_id)
{
    if (json_object_get(stored, "message_id") != NULL)
        return json_deep_copy(stored); /* written whole by an older version */
    int64_t at = (int64_t)json_integer_value(json_object_get(stored, "at"));
    const char *detail = json_string_value(json_object_get(stored, "detail"));
    char created[32];
    sb_format_iso8601(at, created);
    char *one = sb_deliver_attempt_text(at, "delivered", SB_REASON_NONE, detail,
                                        (int)json_integer_value(json_object_get(stored, "status")),
                                        json_number_value(json_object_get(stored, "ms")), 0);
    json_t *attempts = json_array();
    json_array_append_new(attempts, json_loads(one, 0, NULL)); /* our own text: it parses */
    sb_free(one);
    return json_pack("{s:o,s:n,s:o,s:O,s:O,s:s,s:n,s:o,s:s,s:o,s:s}", "message_id",
                     sb_json_text(message_id), "task_id", "workspace_id", sb_json_text(ws), "kind",
                     json_object_get(stored, "kind"), "source", json_object_get(stored, "source"),
                     "mode", "push", "reason", "detail", sb_json_text(detail ? detail : ""),
                     "state", "delivered", "attempts", attempts, "created_at", created);
}

/* ---- event streams (text/event-stream), relayed as they arrive ---- */

static void on_stream_caller_gone(sb_request *req, void *arg);

#define RELAY_HIGH (256 * 1024) /* client backlog that pauses the agent's stream */
#define RELAY_LOW (64 * 1024)   /* backlog under which it resumes */
#define RELAY_CHECK_MS 20       /* backlog polling while paused (no drain hook yet) */

/* A 2xx event stream is relayed from its head on; anything else is buffered and judged
 * by on_push_done exactly as before. */
static int on_stream_head(int status, const sb_headers *headers, void *arg)
{
    delivery *d = arg;
    if (status / 100 != 2 || !is_event_stream(sb_headers_get(headers, "Content-Type")) ||
        sb_request_gone(d->req))
        return 0;
    static const char *const kept[] = {"Content-Type", "A2A-Version", "Cache-Control"};
    sb_headers h;
    sb_headers_init(&h);
    for (size_t i = 0; i < SB_ARRAY_LEN(kept); i++) {
        const char *v = sb_headers_get(headers, kept[i]);
        if (v != NULL)
            sb_headers_add(&h, kept[i], v);
    }
    sb_headers_add(&h, "X-Delivery-Mode", "push");
    sb_response_start(d->req, status, &h);
    sb_headers_clear(&h);
    d->streaming = 1;
    d->req->on_gone = on_stream_caller_gone;
    d->req->on_gone_arg = d;
    return 1;
}

static void stream_finished(delivery *d, const char *detail, int status);

/* While the agent is paused (and once the caller is gone): resume when the caller has
 * caught up; stop the agent's stream (RST_STREAM or close) when nobody reads it. */
static void stream_resume_check(evutil_socket_t fd, short what, void *arg)
{
    delivery *d = arg;
    if (sb_request_gone(d->req)) {
        sb_upstream_cancel(d->up);
        d->up = NULL;
        stream_finished(d, "event stream: the caller went away", 200);
        return;
    }
    if (sb_response_pending(d->req) <= RELAY_LOW) {
        sb_upstream_pause(d->up, 0);
        return;
    }
    struct timeval tv = {0, RELAY_CHECK_MS * 1000};
    event_add(d->resume_ev, &tv);
}

static struct event *resume_event(delivery *d)
{
    if (d->resume_ev == NULL)
        d->resume_ev = sb_event_new(d->req->worker->base, -1, 0, stream_resume_check, d);
    return d->resume_ev;
}

/* The caller left mid-stream: cancel the agent's stream now, not at its next event (an
 * agent thinking for minutes would otherwise hold the stream open). Deferred to the loop
 * because detach can run inside a codec call made from this module. */
static void on_stream_caller_gone(sb_request *req, void *arg)
{
    event_active(resume_event(arg), EV_TIMEOUT, 0);
}

/* The agent's answer counts as delivered: the decision line and the delivery record. */
static void record_delivered(delivery *d, const char *detail, int status)
{
    log_decision(d, "push", SB_REASON_NONE, detail, status, NULL);
    d->reason = SB_REASON_NONE;
    d->http_status = status;
    sb_copy_str(d->detail, sizeof(d->detail), detail);
    int keep = d->req->worker->cfg->pushed_record_ttl_s > 0;
    size_t record_len = 0;
    char *record = keep && is_send(&d->call) ? pushed_record(d, &record_len) : NULL;
    note(d, SB_NOTE_DELIVERED, record, record_len);
    sb_free(record);
    sb_retry_after_push(d->req->worker, d->ws); /* the agent is up: its backlog may go too */
}

/* The stream is over (|detail| says how): the push counts as delivered — its head is
 * out, so there is no fallback any more. */
static void stream_finished(delivery *d, const char *detail, int status)
{
    if (d->counted) {
        sb_circuit_end(d->ws, SB_REASON_NONE);
        d->counted = 0;
    }
    record_delivered(d, detail, status);
    d->req->on_gone = NULL;
    sb_response_end(d->req);
    delivery_free(d);
}

static void on_stream_data(struct evbuffer *data, void *arg)
{
    delivery *d = arg;
    if (sb_request_gone(d->req)) {
        /* Nobody reads it any more: stop the agent's stream (RST_STREAM or close). */
        sb_upstream_cancel(d->up);
        stream_finished(d, "event stream: the caller went away", 200);
        return;
    }
    sb_response_write(d->req, data);
    if (sb_response_pending(d->req) > RELAY_HIGH) {
        sb_upstream_pause(d->up, 1);
        struct timeval tv = {0, RELAY_CHECK_MS * 1000};
        event_add(resume_event(d), &tv);
    }
}

static void on_push_done(const sb_upstream_result *res, void *arg)
{
    ((delivery *)arg)->up = NULL;
    inflight_unlink(arg);
    if (res->streamed) {
        delivery *d = arg;
        char detail[384];
        sb_metrics_push_observe(res->duration_us);
        d->push_us = res->duration_us;
        if (res->reason == SB_REASON_NONE) {
            sb_response_write(d->req, res->body); /* the tail on_data had not taken */
            snprintf(detail, sizeof(detail), "POST %s → %d (event stream)", d->ep->url_str,
                     res->status);
        } else {
            snprintf(detail, sizeof(detail), "event stream cut short: %s: %s",
                     sb_reason_name(res->reason), res->detail);
        }
        stream_finished(d, detail, res->reason == SB_REASON_NONE ? res->status : 0);
        return;
    }
    delivery *d = arg;
    char detail[384];
    sb_reason reason = sb_deliver_classify(res, d->ep->url_str, detail, sizeof(detail), NULL);
    sb_metrics_push_observe(res->duration_us);
    if (d->counted) {
        sb_circuit_end(d->ws, reason);
        d->counted = 0;
    }
    d->push_us = res->duration_us;
    if (reason != SB_REASON_NONE) {
        fall_back(d, reason, detail, res->status);
        return;
    }
    relay(d, res);
    record_delivered(d, detail, res->status);
    delivery_free(d);
}

/* The first pre-push reason of the registry that applies to |ep| at |now_ms|, or
 * SB_REASON_NONE (circuit_open and busy come after, from the circuit breaker). */
static sb_reason decide(const sb_endpoint *ep, int64_t now_ms, char *detail, size_t cap)
{
    if (ep == NULL) {
        snprintf(detail, cap, "no endpoint is registered for this workspace");
        return SB_REASON_NO_ENDPOINT;
    }
    if (ep->mode == SB_MODE_POLL) {
        snprintf(detail, cap, "the workspace is registered with delivery_mode poll");
        return SB_REASON_POLL_MODE;
    }
    if (ep->lease_expires_at_ms != 0 && ep->lease_expires_at_ms <= now_ms) {
        char at[32];
        sb_format_iso8601(ep->lease_expires_at_ms, at);
        snprintf(detail, cap, "the registration lease expired at %s without a heartbeat", at);
        return SB_REASON_LEASE_EXPIRED;
    }
    return SB_REASON_NONE;
}

/* ---- ordered workspaces (SPEC §4.1): a new message waits behind a backlog ---- */

static void admit_and_push(delivery *d);

/* KEYS: the workspace's ready and leased sets. Messages queued or leased now. */
static const char backlog_lua[] =
    "return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])\n";

static void on_backlog(redisReply *rep, void *arg)
{
    delivery *d = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0) {
        char detail[256];
        snprintf(detail, sizeof(detail),
                 "the workspace is registered ordered and %lld older message%s %s queued: this "
                 "one waits behind them",
                 rep->integer, rep->integer == 1 ? "" : "s", rep->integer == 1 ? "is" : "are");
        fall_back(d, SB_REASON_BACKLOG, detail, 0);
        return;
    }
    /* No backlog — or Redis could not say, and then the queue could not take the message
     * either: push it. */
    admit_and_push(d);
}

/* Asks Redis whether |d|'s ordered workspace has queued or leased messages. SB_OK: the
 * answer goes to on_backlog, which owns |d| from then on. */
static int ask_backlog(delivery *d)
{
    char ready[SB_WS_ID_MAX + 32], leased[SB_WS_ID_MAX + 32];
    snprintf(ready, sizeof(ready), "sb:{%s}:q:ready", d->ws);
    snprintf(leased, sizeof(leased), "sb:{%s}:q:leased", d->ws);
    const char *args[] = {ready, leased};
    return sb_sync_eval(d->req->worker->redis, backlog_lua, 2, 2, args, on_backlog, d);
}

static int is_task_call(const sb_a2a_call *c)
{
    return c->kind == SB_A2A_GET_TASK || c->kind == SB_A2A_CANCEL_TASK ||
           c->kind == SB_A2A_RESUBSCRIBE;
}

void sb_deliver(sb_request *req, const char *ws, sb_message_kind kind, const char *source,
                sb_a2a_call *call)
{
    if (is_task_call(call) && sb_task_is_ours(call->task_id)) {
        sb_task_answer(req, ws, call);
        return;
    }
    if (sb_notify_is_config_method(call->method) && sb_task_is_ours(sb_notify_config_task(call))) {
        sb_notify_answer(req, ws, call); /* push-notification configs of our own tasks */
        return;
    }
    delivery *d = sb_calloc(1, sizeof(*d));
    sb_request_ref(req);
    d->req = req;
    d->call = *call;
    memset(call, 0, sizeof(*call));
    d->kind = kind;
    d->started_us = sb_chain_mono_us();
    sb_copy_str(d->ws, sizeof(d->ws), ws);
    sb_copy_str(d->source, sizeof(d->source), source);
    if (d->call.message_id != NULL) {
        sb_copy_str(d->message_id, sizeof(d->message_id), d->call.message_id);
    } else {
        /* Calls without a messageId (tasks/get, ...) still get an id to trace them by. */
        sb_random_id("req_", 12, d->message_id, sizeof(d->message_id));
    }

    char detail[256];
    d->ep = sb_registry_get(ws);
    sb_reason reason = decide(d->ep, sb_chain_wall_ms(), detail, sizeof(detail));
    if (reason != SB_REASON_NONE) {
        fall_back(d, reason, detail, 0);
        return;
    }
    if (d->ep->ordered && is_send(&d->call) && ask_backlog(d) == SB_OK)
        return; /* on_backlog goes on */
    admit_and_push(d);
}

/* The circuit breaker's decision, then the push. Takes ownership of |d|. */
static void admit_and_push(delivery *d)
{
    char detail[256];
    sb_request *req = d->req;
    sb_reason reason = sb_circuit_begin(d->ws, d->ep->max_concurrency, detail, sizeof(detail));
    d->counted = reason == SB_REASON_NONE;
    if (reason != SB_REASON_NONE) {
        fall_back(d, reason, detail, 0);
        return;
    }
    sb_message_kind kind = d->kind;

    sb_deliver_push_hdrs ph; /* borrowed: nothing allocated, spec_build copies once */
    const char *user = sb_headers_get(&req->headers, "X-Switchboard-User");
    sb_deliver_push_headers_view(&ph, d->ep, d->message_id, d->source, sb_kind_name(kind),
                                 sb_headers_get(&req->headers, "A2A-Version"),
                                 kind == SB_KIND_CHAT ? user : NULL);
    const sb_headers *hs = &ph.list;
    d->pushed = 1;
    d->push_began_ms = sb_chain_wall_ms();
    /* The request's body stays whole for a fallback: the push references it. */
    sb_upstream_send_opts o = {.body_shared = 1};
    if (d->call.kind == SB_A2A_STREAM || d->call.kind == SB_A2A_RESUBSCRIBE) {
        o.on_head = on_stream_head;
        o.on_data = on_stream_data;
    }
    d->up = push_submit(req->worker->upstream, d->ep, hs, req->body, &o, on_push_done, d);
    inflight_link(d);
    sb_deliver_push_headers_wipe(&ph);
}

size_t sb_deliver_inflight(void)
{
    return ninflight;
}

void sb_deliver_abort_inflight(void)
{
    while (inflight != NULL) {
        delivery *d = inflight;
        inflight_unlink(d);
        sb_upstream_cancel(d->up);
        d->up = NULL;
        if (d->counted) {
            /* A stop says nothing about the agent's health: a neutral outcome. */
            sb_circuit_end(d->ws, SB_REASON_NO_ENDPOINT);
            d->counted = 0;
        }
        if (d->streaming) {
            stream_finished(d, "event stream cut short: switchboard stopped", 200);
            continue;
        }
        char detail[384];
        snprintf(detail, sizeof(detail),
                 "switchboard stopped before the agent answered POST %s (graceful stop "
                 "deadline)",
                 d->ep->url_str);
        fall_back(d, SB_REASON_RESPONSE_TIMEOUT, detail, 0);
    }
}
