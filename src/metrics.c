/*
 * metrics.c — counters, histograms and the text exposition (see metrics.h).
 *
 * Storage: every counter of the process is one slot of a flat array; a shard is one
 * such array per counting thread. The slot layout (enum below) places the label
 * combinations of each family side by side, so a scrape is one loop that sums every
 * shard into a snapshot, followed by formatting. Shards are claimed on a thread's first
 * count (one allocation, CAS-published) and never freed, so a thread-local pointer to
 * one never dangles and counts survive the thread.
 *
 * Lifecycle: nothing to initialise; the status-code table is built once on first use
 * (pthread_once). sb_metrics_test_reset zeroes everything for unit tests.
 *
 * Never: take a lock or allocate on a counting path (after the thread's first count),
 * or hold any module's lock while formatting (state gauges are read first, then
 * written out).
 */
#include "switchboard/metrics.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/headers.h"
#include "switchboard/util.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* ---- closed label sets ---- */

#define NKINDS 2 /* sb_message_kind */
static const char *const mode_names[] = {"push", "poll", "rejected"};
#define NMODES SB_ARRAY_LEN(mode_names)
static const char *const dead_names[] = {"max_deliveries", "expired"};
#define NDEAD SB_ARRAY_LEN(dead_names)
static const char *const notify_names[] = {"delivered", "failed", "gave_up"};
#define NNOTIFY SB_ARRAY_LEN(notify_names)
static const char *const redelivery_names[] = {"delivered", "failed", "refused"};
#define NREDELIVERY SB_ARRAY_LEN(redelivery_names)

/* Route slots: 0 is "unmatched" (NULL route), the last is "other" (table full). */
#define ROUTE_UNMATCHED 0
#define ROUTE_OTHER (SB_METRICS_MAX_ROUTES - 1)

/* Status-code slots: statuses with a standard reason phrase first, then one per class
 * (1xx..5xx), then "other" (outside 100..599). */
#define NCODES 64
#define CODE_CLASS0 (NCODES - 6)
#define CODE_OTHER (NCODES - 1)

/* ---- histogram buckets (upper bounds, microseconds) ---- */

/* Pushes and HTTP requests: agents answer chat with LLM calls (--push-timeout-s 300). */
static const uint64_t latency_bounds_us[] = {
    1000,    2500,    5000,    10000,    25000,    50000,    100000,    250000,   500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000};
/* Redis commands: sub-millisecond when healthy, bounded by the 10 s command watchdog. */
static const uint64_t redis_bounds_us[] = {100,     250,     500,     1000,    2500,   5000,
                                           10000,   25000,   50000,   100000,  250000, 500000,
                                           1000000, 2500000, 5000000, 10000000};

#define HIST_MAX_BUCKETS 17
/* A histogram's slots: per-bucket (not cumulative) counts, the +Inf overflow at
 * [HIST_MAX_BUCKETS], the sum in microseconds at [HIST_SUM]. */
#define HIST_SUM (HIST_MAX_BUCKETS + 1)
#define HIST_SLOTS (HIST_MAX_BUCKETS + 2)

_Static_assert(SB_ARRAY_LEN(latency_bounds_us) <= HIST_MAX_BUCKETS, "latency buckets");
_Static_assert(SB_ARRAY_LEN(redis_bounds_us) <= HIST_MAX_BUCKETS, "redis buckets");

/* ---- slot layout ---- */

enum {
    SLOT_MESSAGES = 0,                                /* [kind][mode] */
    SLOT_FALLBACKS = SLOT_MESSAGES + NKINDS * NMODES, /* [reason] */
    SLOT_LEASES = SLOT_FALLBACKS + SB_REASON__COUNT,
    SLOT_ACKS,
    SLOT_REDELIVERIES,
    SLOT_DRAINED,
    SLOT_NOTES_DEFERRED,                           /* record notes held while Redis was away */
    SLOT_NOTES_DROPPED,                            /* ... and those dropped past the bound */
    SLOT_DEAD,                                     /* [dead reason] */
    SLOT_NOTIFY = SLOT_DEAD + NDEAD,               /* [notification outcome] */
    SLOT_REDELIVER = SLOT_NOTIFY + NNOTIFY,        /* [redelivery outcome] */
    SLOT_PUSH_HIST = SLOT_REDELIVER + NREDELIVERY, /* histogram */
    SLOT_REDIS_HIST = SLOT_PUSH_HIST + HIST_SLOTS,
    SLOT_HTTP = SLOT_REDIS_HIST + HIST_SLOTS,                    /* [route][code] */
    SLOT_HTTP_HIST = SLOT_HTTP + SB_METRICS_MAX_ROUTES * NCODES, /* [route] histograms */
    NSLOTS = SLOT_HTTP_HIST + SB_METRICS_MAX_ROUTES * HIST_SLOTS
};

typedef struct shard {
    _Atomic uint64_t c[NSLOTS];
} shard;

#define MAX_SHARDS 64

static _Atomic(shard *) shards[MAX_SHARDS];
static atomic_uint next_shard;
static _Thread_local shard *my_shard;

static _Atomic(const char *) route_names[SB_METRICS_MAX_ROUTES];

/* Queue gauges: set together, read together. */
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static long long queue_depth;
static int64_t queue_oldest_ms;
static long long stalled_workspaces; /* under queue_lock too */

/* status → code slot, and code slot → the status it stands for (class slots: 1..5). */
static pthread_once_t codes_once = PTHREAD_ONCE_INIT;
static unsigned char code_of_status[600];
static int status_of_code[NCODES];

static void build_codes(void)
{
    int next = 0;
    for (int s = 100; s < 600; s++) {
        if (next < CODE_CLASS0 && strcmp(sb_http_reason_phrase(s), "Unknown") != 0) {
            status_of_code[next] = s;
            code_of_status[s] = (unsigned char)next++;
        } else {
            code_of_status[s] = (unsigned char)(CODE_CLASS0 + s / 100 - 1);
        }
    }
    for (int c = 1; c <= 5; c++)
        status_of_code[CODE_CLASS0 + c - 1] = c;
}

static int code_slot(int status)
{
    pthread_once(&codes_once, build_codes);
    if (status < 100 || status > 599)
        return CODE_OTHER;
    return code_of_status[status];
}

/* The calling thread's shard, claimed on first use. */
static shard *local_shard(void)
{
    shard *s = my_shard;
    if (s != NULL)
        return s;
    unsigned idx = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % MAX_SHARDS;
    s = atomic_load_explicit(&shards[idx], memory_order_acquire);
    if (s == NULL) {
        shard *fresh = sb_calloc(1, sizeof(*fresh));
        shard *expected = NULL;
        if (atomic_compare_exchange_strong_explicit(&shards[idx], &expected, fresh,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            s = fresh;
        } else {
            sb_free(fresh); /* another thread sharing this index was first */
            s = expected;
        }
    }
    my_shard = s;
    return s;
}

static void add(size_t slot, uint64_t n)
{
    atomic_fetch_add_explicit(&local_shard()->c[slot], n, memory_order_relaxed);
}

static void observe(size_t base, const uint64_t *bounds, size_t nb, uint64_t v)
{
    size_t i = 0;
    while (i < nb && v > bounds[i])
        i++;
    shard *s = local_shard();
    atomic_fetch_add_explicit(&s->c[base + (i < nb ? i : HIST_MAX_BUCKETS)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&s->c[base + HIST_SUM], v, memory_order_relaxed);
}

/* The slot of |route|: interned on first sight, lock-free. Slots fill in order and are
 * never emptied (but by the test reset), so the first empty slot ends the search. */
static int route_slot(const char *route)
{
    if (route == NULL)
        return ROUTE_UNMATCHED;
    for (int i = 1; i < ROUTE_OTHER; i++) {
        const char *p = atomic_load_explicit(&route_names[i], memory_order_acquire);
        if (p == NULL) {
            const char *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(&route_names[i], &expected, route,
                                                        memory_order_acq_rel, memory_order_acquire))
                return i;
            p = expected; /* another thread interned a route here meanwhile */
        }
        if (p == route || strcmp(p, route) == 0)
            return i;
    }
    return ROUTE_OTHER;
}

/* ---- counting ---- */

void sb_metrics_delivery(sb_message_kind kind, const char *mode, sb_reason reason)
{
    if (reason > SB_REASON_NONE && reason < SB_REASON__COUNT)
        add(SLOT_FALLBACKS + (size_t)reason, 1);
    if ((unsigned)kind >= NKINDS || mode == NULL)
        return;
    for (size_t m = 0; m < NMODES; m++) {
        if (strcmp(mode, mode_names[m]) == 0) {
            add(SLOT_MESSAGES + (size_t)kind * NMODES + m, 1);
            return;
        }
    }
}

void sb_metrics_push_observe(uint64_t duration_us)
{
    observe(SLOT_PUSH_HIST, latency_bounds_us, SB_ARRAY_LEN(latency_bounds_us), duration_us);
}

void sb_metrics_inbox_leased(int delivery_count)
{
    add(SLOT_LEASES, 1);
    if (delivery_count > 1)
        add(SLOT_REDELIVERIES, 1);
}

void sb_metrics_inbox_acked(void)
{
    add(SLOT_ACKS, 1);
}

void sb_metrics_dead_letters(const char *reason, unsigned long n)
{
    if (reason == NULL || n == 0)
        return;
    for (size_t i = 0; i < NDEAD; i++) {
        if (strcmp(reason, dead_names[i]) == 0) {
            add(SLOT_DEAD + i, n);
            return;
        }
    }
}

void sb_metrics_set_stalled(long long n)
{
    pthread_mutex_lock(&queue_lock);
    stalled_workspaces = n > 0 ? n : 0;
    pthread_mutex_unlock(&queue_lock);
}

void sb_metrics_drained(void)
{
    add(SLOT_DRAINED, 1);
}

void sb_metrics_notification(const char *outcome)
{
    for (size_t i = 0; i < NNOTIFY; i++) {
        if (strcmp(outcome, notify_names[i]) == 0) {
            add(SLOT_NOTIFY + i, 1);
            return;
        }
    }
}

void sb_metrics_redelivery(const char *outcome)
{
    for (size_t i = 0; outcome != NULL && i < NREDELIVERY; i++) {
        if (strcmp(outcome, redelivery_names[i]) == 0) {
            add(SLOT_REDELIVER + i, 1);
            return;
        }
    }
}

void sb_metrics_record_note_deferred(int dropped)
{
    add(dropped ? SLOT_NOTES_DROPPED : SLOT_NOTES_DEFERRED, 1);
}

void sb_metrics_http_request(const char *route, int status, uint64_t duration_us)
{
    size_t r = (size_t)route_slot(route);
    add(SLOT_HTTP + r * NCODES + (size_t)code_slot(status), 1);
    observe(SLOT_HTTP_HIST + r * HIST_SLOTS, latency_bounds_us, SB_ARRAY_LEN(latency_bounds_us),
            duration_us);
}

void sb_metrics_redis_command(uint64_t duration_us)
{
    observe(SLOT_REDIS_HIST, redis_bounds_us, SB_ARRAY_LEN(redis_bounds_us), duration_us);
}

void sb_metrics_set_queue(long long depth, int64_t oldest_enqueued_at_ms)
{
    pthread_mutex_lock(&queue_lock);
    queue_depth = depth > 0 ? depth : 0;
    queue_oldest_ms = oldest_enqueued_at_ms > 0 ? oldest_enqueued_at_ms : 0;
    pthread_mutex_unlock(&queue_lock);
}

void sb_metrics_test_reset(void)
{
    for (size_t i = 0; i < MAX_SHARDS; i++) {
        shard *s = atomic_load_explicit(&shards[i], memory_order_acquire);
        if (s == NULL)
            continue;
        for (size_t j = 0; j < NSLOTS; j++)
            atomic_store_explicit(&s->c[j], 0, memory_order_relaxed);
    }
    for (size_t i = 0; i < SB_METRICS_MAX_ROUTES; i++)
        atomic_store_explicit(&route_names[i], NULL, memory_order_release);
    sb_metrics_set_queue(0, 0);
    sb_metrics_set_stalled(0);
}

/* ---- exposition ---- */

void sb_metrics_escape_label(struct evbuffer *out, const char *s)
{
    const char *run = s;
    for (; *s != '\0'; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (esc == NULL)
            continue;
        evbuffer_add(out, run, (size_t)(s - run));
        evbuffer_add(out, esc, 2);
        run = s + 1;
    }
    evbuffer_add(out, run, (size_t)(s - run));
}

/* |us| microseconds as exact decimal seconds without trailing zeros ("0.0025", "300"). */
static void fmt_seconds(uint64_t us, char buf[32])
{
    int n = snprintf(buf, 32, "%" PRIu64 ".%06" PRIu64, us / 1000000u, us % 1000000u);
    while (n > 0 && buf[n - 1] == '0')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = '\0';
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample line: name, then up to two label pairs (a NULL key ends them), then the
 * value text. */
static void sample(struct evbuffer *out, const char *name, const char *k1, const char *v1,
                   const char *k2, const char *v2, const char *value)
{
    evbuffer_add_printf(out, "%s", name);
    if (k1 != NULL) {
        evbuffer_add_printf(out, "{%s=\"", k1);
        sb_metrics_escape_label(out, v1);
        if (k2 != NULL) {
            evbuffer_add_printf(out, "\",%s=\"", k2);
            sb_metrics_escape_label(out, v2);
        }
        evbuffer_add(out, "\"}", 2);
    }
    evbuffer_add_printf(out, " %s\n", value);
}

static void sample_u64(struct evbuffer *out, const char *name, const char *k1, const char *v1,
                       const char *k2, const char *v2, uint64_t value)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, value);
    sample(out, name, k1, v1, k2, v2, buf);
}

/* The _bucket, _sum and _count lines of one histogram whose slots start at |h|; |lk|/|lv|
 * is an optional extra label (NULL for none). */
static void histogram(struct evbuffer *out, const char *name, const char *lk, const char *lv,
                      const uint64_t *h, const uint64_t *bounds, size_t nb)
{
    char series[128], le[32];
    uint64_t cumulative = 0;
    snprintf(series, sizeof(series), "%s_bucket", name);
    for (size_t i = 0; i <= nb; i++) {
        cumulative += h[i < nb ? i : HIST_MAX_BUCKETS];
        if (i < nb)
            fmt_seconds(bounds[i], le);
        else
            snprintf(le, sizeof(le), "+Inf");
        if (lk != NULL)
            sample_u64(out, series, lk, lv, "le", le, cumulative);
        else
            sample_u64(out, series, "le", le, NULL, NULL, cumulative);
    }
    char sum[32];
    fmt_seconds(h[HIST_SUM], sum);
    snprintf(series, sizeof(series), "%s_sum", name);
    sample(out, series, lk, lv, NULL, NULL, sum);
    snprintf(series, sizeof(series), "%s_count", name);
    sample_u64(out, series, lk, lv, NULL, NULL, cumulative);
}

static void sum_shards(uint64_t *t)
{
    for (size_t i = 0; i < MAX_SHARDS; i++) {
        shard *s = atomic_load_explicit(&shards[i], memory_order_acquire);
        if (s == NULL)
            continue;
        for (size_t j = 0; j < NSLOTS; j++)
            t[j] += atomic_load_explicit(&s->c[j], memory_order_relaxed);
    }
}

static const char *route_label(int r)
{
    if (r == ROUTE_UNMATCHED)
        return "unmatched";
    if (r == ROUTE_OTHER)
        return "other";
    return atomic_load_explicit(&route_names[r], memory_order_acquire);
}

static void code_label(int c, char buf[8])
{
    if (c == CODE_OTHER)
        snprintf(buf, 8, "other");
    else if (c >= CODE_CLASS0)
        snprintf(buf, 8, "%dxx", status_of_code[c]);
    else
        snprintf(buf, 8, "%d", status_of_code[c]);
}

static void render_http(struct evbuffer *out, const uint64_t *t)
{
    pthread_once(&codes_once, build_codes);
    family(out, "switchboard_http_requests_total", "counter",
           "HTTP responses completed, by route pattern and status code.");
    for (int r = 0; r < SB_METRICS_MAX_ROUTES; r++) {
        const char *route = route_label(r);
        if (route == NULL)
            continue;
        for (int c = 0; c < NCODES; c++) {
            uint64_t n = t[SLOT_HTTP + (size_t)r * NCODES + (size_t)c];
            if (n == 0)
                continue;
            char code[8];
            code_label(c, code);
            sample_u64(out, "switchboard_http_requests_total", "route", route, "code", code, n);
        }
    }
    family(out, "switchboard_http_request_duration_seconds", "histogram",
           "Time from a request's start to its response's end, by route pattern.");
    for (int r = 0; r < SB_METRICS_MAX_ROUTES; r++) {
        const char *route = route_label(r);
        const uint64_t *h = t + SLOT_HTTP_HIST + (size_t)r * HIST_SLOTS;
        uint64_t count = h[HIST_MAX_BUCKETS];
        for (size_t i = 0; i < SB_ARRAY_LEN(latency_bounds_us); i++)
            count += h[i];
        if (route == NULL || count == 0)
            continue;
        histogram(out, "switchboard_http_request_duration_seconds", "route", route, h,
                  latency_bounds_us, SB_ARRAY_LEN(latency_bounds_us));
    }
}

void sb_metrics_render(struct evbuffer *out, const sb_metrics_state *state)
{
    static const sb_metrics_state none;
    const sb_metrics_state *st = state != NULL ? state : &none;
    long long qdepth;
    int64_t qoldest_ms;
    pthread_mutex_lock(&queue_lock);
    qdepth = queue_depth;
    qoldest_ms = queue_oldest_ms;
    long long stalled = stalled_workspaces;
    pthread_mutex_unlock(&queue_lock);
    uint64_t *t = sb_calloc(NSLOTS, sizeof(*t));
    sum_shards(t);

    family(out, "switchboard_messages_total", "counter",
           "Messages by kind and delivery mode (push: relayed from the agent, poll: queued, "
           "rejected: neither).");
    for (int k = 0; k < NKINDS; k++)
        for (size_t m = 0; m < NMODES; m++)
            sample_u64(out, "switchboard_messages_total", "kind", sb_kind_name((sb_message_kind)k),
                       "mode", mode_names[m], t[SLOT_MESSAGES + (size_t)k * NMODES + m]);

    family(out, "switchboard_poll_fallbacks_total", "counter",
           "Messages not pushed, by the reason (one per message).");
    for (int r = SB_REASON_NONE + 1; r < SB_REASON__COUNT; r++)
        sample_u64(out, "switchboard_poll_fallbacks_total", "reason", sb_reason_name((sb_reason)r),
                   NULL, NULL, t[SLOT_FALLBACKS + (size_t)r]);

    family(out, "switchboard_push_duration_seconds", "histogram",
           "Round trip of pushes to agents, any outcome.");
    histogram(out, "switchboard_push_duration_seconds", NULL, NULL, t + SLOT_PUSH_HIST,
              latency_bounds_us, SB_ARRAY_LEN(latency_bounds_us));

    char v[32];
    family(out, "switchboard_queue_depth", "gauge",
           "Messages queued or leased in the poll queue, all workspaces.");
    snprintf(v, sizeof(v), "%lld", qdepth);
    sample(out, "switchboard_queue_depth", NULL, NULL, NULL, NULL, v);
    family(out, "switchboard_queue_oldest_age_seconds", "gauge",
           "Age of the oldest message in the poll queue, all workspaces (0 when empty).");
    int64_t now_ms = sb_now_wall_ms();
    uint64_t age_ms = qoldest_ms > 0 && now_ms > qoldest_ms ? (uint64_t)(now_ms - qoldest_ms) : 0;
    fmt_seconds(age_ms * 1000u, v);
    sample(out, "switchboard_queue_oldest_age_seconds", NULL, NULL, NULL, NULL, v);

    family(out, "switchboard_stalled_workspaces", "gauge",
           "Push-mode workspaces whose oldest queued message is older than 5 minutes.");
    snprintf(v, sizeof(v), "%lld", stalled);
    sample(out, "switchboard_stalled_workspaces", NULL, NULL, NULL, NULL, v);

    family(out, "switchboard_inbox_leases_total", "counter",
           "Messages handed to inbox consumers by leases.");
    sample_u64(out, "switchboard_inbox_leases_total", NULL, NULL, NULL, NULL, t[SLOT_LEASES]);
    family(out, "switchboard_inbox_acks_total", "counter", "Messages acked by inbox consumers.");
    sample_u64(out, "switchboard_inbox_acks_total", NULL, NULL, NULL, NULL, t[SLOT_ACKS]);
    family(out, "switchboard_inbox_redeliveries_total", "counter",
           "Leases of messages that had been leased before.");
    sample_u64(out, "switchboard_inbox_redeliveries_total", NULL, NULL, NULL, NULL,
               t[SLOT_REDELIVERIES]);
    family(out, "switchboard_dead_letters_total", "counter",
           "Messages moved to dead letters, by reason.");
    for (size_t i = 0; i < NDEAD; i++)
        sample_u64(out, "switchboard_dead_letters_total", "reason", dead_names[i], NULL, NULL,
                   t[SLOT_DEAD + i]);
    family(out, "switchboard_drained_total", "counter",
           "Queued messages pushed and acked by switchboard's own redelivery.");
    sample_u64(out, "switchboard_drained_total", NULL, NULL, NULL, NULL, t[SLOT_DRAINED]);
    family(out, "switchboard_drain_buffered_bytes", "gauge",
           "Queued requests the recovery drains hold leased ahead of their pushes (at most "
           "16 MB a drain and 64 MB together, plus one lease each).");
    sample_u64(out, "switchboard_drain_buffered_bytes", NULL, NULL, NULL, NULL, st->drain_buffered);
    family(out, "switchboard_notifications_total", "counter",
           "A2A push notifications switchboard sent for its own tasks, by outcome (delivered, "
           "failed: retried with back-off, gave_up: a state not notified after the last try).");
    for (size_t i = 0; i < NNOTIFY; i++)
        sample_u64(out, "switchboard_notifications_total", "outcome", notify_names[i], NULL, NULL,
                   t[SLOT_NOTIFY + i]);
    family(out, "switchboard_redeliveries_total", "counter",
           "Steps of switchboard's own redelivery of queued messages, by outcome: delivered, "
           "failed (the push failed), refused (held back by the circuit breaker or the "
           "in-flight limit).");
    for (size_t i = 0; i < NREDELIVERY; i++)
        sample_u64(out, "switchboard_redeliveries_total", "outcome", redelivery_names[i], NULL,
                   NULL, t[SLOT_REDELIVER + i]);
    family(out, "switchboard_record_notes_deferred_total", "counter",
           "Delivery records and counters held in memory while Redis was unreachable, sent "
           "when it came back.");
    sample_u64(out, "switchboard_record_notes_deferred_total", NULL, NULL, NULL, NULL,
               t[SLOT_NOTES_DEFERRED]);
    family(out, "switchboard_record_notes_dropped_total", "counter",
           "Delivery records and counters dropped: Redis stayed unreachable past the in-memory "
           "bound.");
    sample_u64(out, "switchboard_record_notes_dropped_total", NULL, NULL, NULL, NULL,
               t[SLOT_NOTES_DROPPED]);

    family(out, "switchboard_endpoints", "gauge", "Registered endpoints by delivery mode.");
    sample_u64(out, "switchboard_endpoints", "mode", "push", NULL, NULL, st->endpoints_push);
    sample_u64(out, "switchboard_endpoints", "mode", "poll", NULL, NULL, st->endpoints_poll);
    family(out, "switchboard_circuits_open", "gauge",
           "Workspaces whose circuit is open or half-open on this instance.");
    sample_u64(out, "switchboard_circuits_open", NULL, NULL, NULL, NULL,
               (uint64_t)(st->circuits_open > 0 ? st->circuits_open : 0));
    family(out, "switchboard_redis_up", "gauge",
           "1 while every Redis connection of this instance is up and the registry replica "
           "is loaded.");
    sample_u64(out, "switchboard_redis_up", NULL, NULL, NULL, NULL, st->redis_up ? 1 : 0);
    family(out, "switchboard_redis_eviction_risk", "gauge",
           "Whether Redis can lose queued messages: 0 safe (noeviction, AOF), 1 unknown, "
           "2 RDB snapshots only, 3 no persistence, 4 an eviction policy.");
    sample_u64(out, "switchboard_redis_eviction_risk", NULL, NULL, NULL, NULL,
               (uint64_t)(st->redis_eviction_risk > 0 ? st->redis_eviction_risk : 0));

    render_http(out, t);

    family(out, "switchboard_connections", "gauge", "Open client connections.");
    sample_u64(out, "switchboard_connections", NULL, NULL, NULL, NULL, st->connections);
    family(out, "switchboard_http_requests_in_flight", "gauge",
           "Requests received and not yet answered.");
    sample_u64(out, "switchboard_http_requests_in_flight", NULL, NULL, NULL, NULL, st->inflight);
    family(out, "switchboard_upstream_idle_connections", "gauge",
           "Idle keep-alive connections to agents.");
    sample_u64(out, "switchboard_upstream_idle_connections", NULL, NULL, NULL, NULL,
               st->upstream_idle);
    family(out, "switchboard_redis_command_duration_seconds", "histogram",
           "Redis commands from send to reply.");
    histogram(out, "switchboard_redis_command_duration_seconds", NULL, NULL, t + SLOT_REDIS_HIST,
              redis_bounds_us, SB_ARRAY_LEN(redis_bounds_us));
    family(out, "switchboard_build_info", "gauge", "Always 1; the version is in the label.");
    sample(out, "switchboard_build_info", "version", SB_VERSION, NULL, NULL, "1");

    sb_free(t);
}
