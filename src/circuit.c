/*
 * circuit.c — per-workspace circuit breaker and in-flight counter (see circuit.h).
 *
 * One process-wide table (workspace id → breaker) behind one mutex. Every worker thread
 * takes the lock twice per push (begin, end) and holds it only for a hash lookup and a
 * few field updates: details and JSON are formatted from a copy after unlocking, and
 * nothing here blocks, logs or does I/O with the lock held.
 *
 * A breaker moves closed → open (threshold reached) → half-open (cool-down passed; the
 * next push becomes the probe, state PROBING while it is in flight) → closed (any
 * delivered answer) or open again with a doubled cool-down (the probe failed).
 * "Half-open before the probe starts" is not stored: it is an open breaker whose
 * monotonic retry time has passed, so no timer is needed.
 *
 * The table never grows without bound: entries are created only by sb_circuit_begin,
 * and when the table reaches its sweep mark the idle entries are dropped by rebuilding
 * the map (which also gives back the slots of the larger one). The mark then moves to
 * twice what survived, so sweeps stay amortized O(1) per insertion even when few entries
 * can be dropped.
 */
#include "switchboard/circuit.h"
#include "switchboard/alloc.h"
#include "switchboard/strmap.h"
#include "switchboard/util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef enum {
    ST_CLOSED = 0,
    ST_OPEN,   /* refusing until retry_at_us; half-open once it has passed */
    ST_PROBING /* half-open with the one probe in flight */
} breaker_state;

typedef struct {
    breaker_state state;
    int failures;          /* consecutive counting failures */
    sb_reason last_reason; /* of the streak's last failure; NONE when failures == 0 */
    int inflight;          /* pushes begun and not ended, the probe included */
    int64_t cooldown_ms;   /* current cool-down; 0 while closed */
    uint64_t retry_at_us;  /* monotonic end of the cool-down (open, probing) */
    int64_t retry_at_ms;   /* the same moment on the wall clock, for operators */
    int64_t opened_at_ms;  /* wall time this outage opened the circuit */
    int64_t probe_at_ms;   /* wall time the probe in flight began (probing) */
} breaker;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static sb_strmap *table;                         /* ws → breaker *; under table_lock */
static size_t sweep_mark = SB_CIRCUIT_TABLE_MAX; /* entry count that triggers a sweep */
static int open_circuits;                        /* breakers not ST_CLOSED */
static uint64_t (*clock_mono_us)(void) = sb_now_mono_us;
static int64_t (*clock_wall_ms)(void) = sb_now_wall_ms;

/* 1 when a push that ended with |r| counts towards opening the circuit (see circuit.h). */
static int counts_as_failure(sb_reason r)
{
    switch (r) {
    case SB_REASON_DNS_ERROR:
    case SB_REASON_CONNECT_REFUSED:
    case SB_REASON_CONNECT_TIMEOUT:
    case SB_REASON_TLS_ERROR:
    case SB_REASON_UPSTREAM_FORBIDDEN:
    case SB_REASON_HTTP_404:
    case SB_REASON_HTTP_405:
    case SB_REASON_HTTP_429:
    case SB_REASON_HTTP_5XX:
    case SB_REASON_HTTP_OTHER:
    case SB_REASON_RESPONSE_TIMEOUT:
    case SB_REASON_CONNECTION_RESET:
    case SB_REASON_INVALID_RESPONSE:
        return 1;
    default:
        return 0;
    }
}

static void ensure_table(void)
{
    if (table == NULL)
        table = sb_strmap_new();
}

static breaker *lookup(const char *ws)
{
    return table != NULL ? sb_strmap_get(table, ws) : NULL;
}

/* ---- transitions (table_lock held) ---- */

static void breaker_close(breaker *b)
{
    if (b->state != ST_CLOSED)
        open_circuits--;
    int inflight = b->inflight;
    memset(b, 0, sizeof(*b));
    b->inflight = inflight;
}

/* Opens |b| (or keeps it open) for |cooldown_ms| from now. */
static void breaker_trip(breaker *b, int64_t cooldown_ms, uint64_t now_us, int64_t now_ms)
{
    if (b->state == ST_CLOSED) {
        open_circuits++;
        b->opened_at_ms = now_ms;
    }
    b->state = ST_OPEN;
    b->cooldown_ms = cooldown_ms;
    b->retry_at_us = now_us + (uint64_t)cooldown_ms * 1000u;
    b->retry_at_ms = now_ms + cooldown_ms;
    b->probe_at_ms = 0;
}

static int64_t next_cooldown(int64_t ms)
{
    return ms >= SB_CIRCUIT_COOLDOWN_MAX_MS / 2 ? SB_CIRCUIT_COOLDOWN_MAX_MS : ms * 2;
}

/* ---- the bound on the table (table_lock held) ---- */

typedef struct {
    sb_strmap *keep;
    int aggressive; /* second tier: also closed-with-streak and past-cool-down entries */
    uint64_t now_us;
} sweep_ctx;

static int sweepable(const breaker *b, const sweep_ctx *ctx)
{
    if (b->inflight > 0 || b->state == ST_PROBING)
        return 0;
    if (b->state == ST_CLOSED && b->failures == 0)
        return 1;
    if (!ctx->aggressive)
        return 0;
    return b->state == ST_CLOSED || ctx->now_us >= b->retry_at_us;
}

static void sweep_one(const char *ws, void *value, void *arg)
{
    sweep_ctx *ctx = arg;
    breaker *b = value;
    if (sweepable(b, ctx)) {
        if (b->state != ST_CLOSED)
            open_circuits--;
        sb_free(b);
    } else {
        sb_strmap_put(ctx->keep, ws, b);
    }
}

static void sweep_pass(int aggressive, uint64_t now_us)
{
    sweep_ctx ctx = {.keep = sb_strmap_new(), .aggressive = aggressive, .now_us = now_us};
    sb_strmap_foreach(table, sweep_one, &ctx);
    sb_strmap_free(table);
    table = ctx.keep;
}

static void sweep(uint64_t now_us)
{
    sweep_pass(0, now_us);
    if (sb_strmap_count(table) >= SB_CIRCUIT_TABLE_MAX)
        sweep_pass(1, now_us);
    size_t left = sb_strmap_count(table);
    sweep_mark = left * 2 > SB_CIRCUIT_TABLE_MAX ? left * 2 : SB_CIRCUIT_TABLE_MAX;
}

static breaker *lookup_or_create(const char *ws, uint64_t now_us)
{
    ensure_table();
    breaker *b = sb_strmap_get(table, ws);
    if (b != NULL)
        return b;
    if (sb_strmap_count(table) >= sweep_mark)
        sweep(now_us);
    b = sb_calloc(1, sizeof(*b));
    sb_strmap_put(table, ws, b);
    return b;
}

/* ---- details (formatted from a copy, outside the lock) ---- */

static void format_refusal(sb_reason r, const breaker *b, int max_concurrency, int by_default,
                           char *detail, size_t cap)
{
    if (detail == NULL || cap == 0)
        return;
    if (r == SB_REASON_BUSY && by_default) {
        snprintf(detail, cap,
                 "%d push%s in flight, this instance's limit for an endpoint without "
                 "max_concurrency is %d (--max-inflight-per-endpoint)",
                 b->inflight, b->inflight == 1 ? "" : "es", max_concurrency);
        return;
    }
    if (r == SB_REASON_BUSY) {
        snprintf(detail, cap, "%d push%s in flight, max_concurrency %d", b->inflight,
                 b->inflight == 1 ? "" : "es", max_concurrency);
        return;
    }
    const char *last = b->failures > 0 ? sb_reason_name(b->last_reason) : "none";
    char at[32];
    if (b->state == ST_PROBING) {
        sb_format_iso8601(b->probe_at_ms, at);
        snprintf(detail, cap,
                 "circuit half-open after %d consecutive failures (last: %s); a probe push is "
                 "in flight since %s, other pushes fall back until it answers",
                 b->failures, last, at);
        return;
    }
    sb_format_iso8601(b->retry_at_ms, at);
    snprintf(detail, cap,
             "circuit open after %d consecutive failures (last: %s); next probe at %s "
             "(cool-down %lld s)",
             b->failures, last, at, (long long)((b->cooldown_ms + 999) / 1000));
}

/* ---- interface ---- */

void sb_circuit_init(void)
{
    pthread_mutex_lock(&table_lock);
    ensure_table();
    pthread_mutex_unlock(&table_lock);
}

static void free_one(const char *ws, void *value, void *arg)
{
    sb_free(value);
}

void sb_circuit_shutdown(void)
{
    pthread_mutex_lock(&table_lock);
    if (table != NULL) {
        sb_strmap_foreach(table, free_one, NULL);
        sb_strmap_free(table);
        table = NULL;
    }
    open_circuits = 0;
    sweep_mark = SB_CIRCUIT_TABLE_MAX;
    pthread_mutex_unlock(&table_lock);
}

/* The in-flight limit of endpoints that declare no max_concurrency (0: none). */
static int default_limit;

void sb_circuit_set_default_limit(int limit)
{
    __atomic_store_n(&default_limit, limit > 0 ? limit : 0, __ATOMIC_RELAXED);
}

sb_reason sb_circuit_begin(const char *ws, int max_concurrency, char *detail, size_t cap)
{
    sb_reason r = SB_REASON_NONE;
    int by_default = max_concurrency <= 0;
    if (by_default)
        max_concurrency = __atomic_load_n(&default_limit, __ATOMIC_RELAXED);
    breaker seen;
    pthread_mutex_lock(&table_lock);
    uint64_t now_us = clock_mono_us();
    breaker *b = lookup_or_create(ws, now_us);
    if (b->state == ST_PROBING || (b->state == ST_OPEN && now_us < b->retry_at_us))
        r = SB_REASON_CIRCUIT_OPEN;
    else if (max_concurrency > 0 && b->inflight >= max_concurrency)
        r = SB_REASON_BUSY;
    else {
        if (b->state == ST_OPEN) {
            b->state = ST_PROBING;
            b->probe_at_ms = clock_wall_ms();
        }
        b->inflight++;
    }
    seen = *b;
    pthread_mutex_unlock(&table_lock);
    if (r != SB_REASON_NONE)
        format_refusal(r, &seen, max_concurrency, by_default, detail, cap);
    return r;
}

void sb_circuit_end(const char *ws, sb_reason reason)
{
    pthread_mutex_lock(&table_lock);
    breaker *b = lookup(ws);
    if (b == NULL) {
        pthread_mutex_unlock(&table_lock);
        return;
    }
    if (b->inflight > 0)
        b->inflight--;
    /* While probing, everything in flight is the probe plus pushes begun before the
     * circuit opened; the last of them to end carries the probe's verdict. */
    int verdict = b->state == ST_PROBING && b->inflight == 0;
    if (reason == SB_REASON_NONE) {
        breaker_close(b);
    } else if (counts_as_failure(reason)) {
        b->failures++;
        b->last_reason = reason;
        if (b->state == ST_CLOSED && b->failures >= SB_CIRCUIT_THRESHOLD)
            breaker_trip(b, SB_CIRCUIT_COOLDOWN_MS, clock_mono_us(), clock_wall_ms());
        else if (verdict)
            breaker_trip(b, next_cooldown(b->cooldown_ms), clock_mono_us(), clock_wall_ms());
    } else if (verdict) {
        /* A neutral answer (401/403/413): reachable, but no verdict on health. The
         * cool-down has passed, so the next push probes again. */
        b->state = ST_OPEN;
        b->probe_at_ms = 0;
    }
    pthread_mutex_unlock(&table_lock);
}

int sb_circuit_inflight(const char *ws)
{
    pthread_mutex_lock(&table_lock);
    const breaker *b = lookup(ws);
    int n = b != NULL ? b->inflight : 0;
    pthread_mutex_unlock(&table_lock);
    return n;
}

void sb_circuit_reset(const char *ws)
{
    pthread_mutex_lock(&table_lock);
    breaker *b = lookup(ws);
    if (b != NULL) {
        breaker_close(b);
        if (b->inflight == 0)
            sb_free(sb_strmap_remove(table, ws));
    }
    pthread_mutex_unlock(&table_lock);
}

static json_t *iso_or_null(int64_t ms, int applies)
{
    if (!applies)
        return json_null();
    char at[32];
    sb_format_iso8601(ms, at);
    return json_string(at);
}

json_t *sb_circuit_describe(const char *ws)
{
    breaker b;
    memset(&b, 0, sizeof(b));
    pthread_mutex_lock(&table_lock);
    uint64_t now_us = clock_mono_us();
    const breaker *found = lookup(ws);
    if (found != NULL)
        b = *found;
    pthread_mutex_unlock(&table_lock);

    const char *state = "closed";
    if (b.state == ST_PROBING || (b.state == ST_OPEN && now_us >= b.retry_at_us))
        state = "half_open";
    else if (b.state == ST_OPEN)
        state = "open";
    int open = b.state != ST_CLOSED;

    json_t *o = json_object();
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "consecutive_failures", json_integer(b.failures));
    json_object_set_new(o, "last_failure_reason",
                        b.failures > 0 ? json_string(sb_reason_name(b.last_reason)) : json_null());
    json_object_set_new(o, "opened_at", iso_or_null(b.opened_at_ms, open));
    json_object_set_new(o, "retry_at", iso_or_null(b.retry_at_ms, b.state == ST_OPEN));
    json_object_set_new(o, "probe_started_at", iso_or_null(b.probe_at_ms, b.state == ST_PROBING));
    json_object_set_new(o, "cooldown_ms", open ? json_integer(b.cooldown_ms) : json_null());
    json_object_set_new(o, "inflight", json_integer(b.inflight));
    return o;
}

void sb_circuit_probe_now(const char *ws)
{
    pthread_mutex_lock(&table_lock);
    breaker *b = lookup(ws);
    if (b != NULL && b->state == ST_OPEN) {
        b->retry_at_us = clock_mono_us();
        b->retry_at_ms = clock_wall_ms();
    }
    pthread_mutex_unlock(&table_lock);
}

int64_t sb_circuit_retry_at_ms(const char *ws)
{
    pthread_mutex_lock(&table_lock);
    const breaker *b = lookup(ws);
    int64_t at = b != NULL && b->state == ST_OPEN ? b->retry_at_ms : 0;
    pthread_mutex_unlock(&table_lock);
    return at;
}

int sb_circuit_open_count(void)
{
    pthread_mutex_lock(&table_lock);
    int n = open_circuits;
    pthread_mutex_unlock(&table_lock);
    return n;
}

void sb_circuit_test_set_clock(uint64_t (*mono_us)(void), int64_t (*wall_ms)(void))
{
    pthread_mutex_lock(&table_lock);
    clock_mono_us = mono_us != NULL ? mono_us : sb_now_mono_us;
    clock_wall_ms = wall_ms != NULL ? wall_ms : sb_now_wall_ms;
    pthread_mutex_unlock(&table_lock);
}

size_t sb_circuit_test_entry_count(void)
{
    pthread_mutex_lock(&table_lock);
    size_t n = table != NULL ? sb_strmap_count(table) : 0;
    pthread_mutex_unlock(&table_lock);
    return n;
}
