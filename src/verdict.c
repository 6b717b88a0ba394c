/*
 * verdict.c — facts in, one sentence out (see verdict.h).
 *
 * The sentence is assembled from clauses in a fixed order: the situation (the first of
 * not registered, poll mode, lapsed lease, open circuit, failing pushes, busy, delivered,
 * nothing yet), then the probe's finding, then the queue and the dead letters. Each
 * clause states facts with their numbers and times; explanations come from one table,
 * so the same reason reads the same in every situation.
 *
 * Lifecycle: none; pure functions, callable from any thread.
 *
 * Never: read a clock, allocate, or print anything that did not come in through the facts.
 */
#include "switchboard/verdict.h"
#include "switchboard/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* A consumer that leased within this window counts as active. */
#define CONSUMER_ACTIVE_MS (5 * 60 * 1000)
/* A refusal older than the current registration is still told for this long. */
#define REFUSAL_RECENT_MS (60 * 60 * 1000)

typedef struct sbuf {
    char *out;
    size_t cap;
    size_t len; /* what the whole sentence needs, even past cap */
} sbuf;

__attribute__((format(printf, 2, 3))) static void put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->len < b->cap ? b->cap - b->len : 0;
    int n = vsnprintf(room ? b->out + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->len += (size_t)n;
}

/* "14:02 UTC" within a day of |now| (either side), else "2026-11-24 14:02 UTC"; with
 * |secs| "14:02:07 UTC". */
static void clock_time_s(int64_t ms, int64_t now, int secs, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    int near = now - ms < 24LL * 3600 * 1000 && ms - now < 24LL * 3600 * 1000;
    strftime(out, 32,
             near ? (secs ? "%H:%M:%S UTC" : "%H:%M UTC")
                  : (secs ? "%Y-%m-%d %H:%M:%S UTC" : "%Y-%m-%d %H:%M UTC"),
             &tm);
}

static void clock_time(int64_t ms, int64_t now, char out[32])
{
    clock_time_s(ms, now, 0, out);
}

/* "45 s", "3 min", "2 h 5 min", "3 days". */
static void span(double s, char out[32])
{
    long v = s < 0 ? 0 : (long)s;
    if (v < 120)
        snprintf(out, 32, "%ld s", v);
    else if (v < 7200)
        snprintf(out, 32, "%ld min", v / 60);
    else if (v < 172800)
        snprintf(out, 32, "%ld h %ld min", v / 3600, (v % 3600) / 60);
    else
        snprintf(out, 32, "%ld days", v / 86400);
}

void sb_verdict_explain(sb_reason r, const char *hostport, char *out, size_t cap)
{
    const char *hp = hostport ? hostport : "the agent's address";
    switch (r) {
    case SB_REASON_NO_ENDPOINT:
        snprintf(out, cap, "no endpoint is registered for this workspace");
        break;
    case SB_REASON_POLL_MODE:
        snprintf(out, cap, "the workspace is registered with delivery_mode poll");
        break;
    case SB_REASON_LEASE_EXPIRED:
        snprintf(out, cap, "the registration lease lapsed without a heartbeat");
        break;
    case SB_REASON_BACKLOG:
        snprintf(out, cap,
                 "the workspace is registered ordered and older messages are still queued: "
                 "new ones wait behind them");
        break;
    case SB_REASON_CIRCUIT_OPEN:
        snprintf(out, cap, "pushes pause after repeated failures until a probe push succeeds");
        break;
    case SB_REASON_BUSY:
        snprintf(out, cap,
                 "pushes in flight reached the registered max_concurrency (or, "
                 "without one, --max-inflight-per-endpoint)");
        break;
    case SB_REASON_DNS_ERROR:
        snprintf(out, cap, "the host name does not resolve");
        break;
    case SB_REASON_CONNECT_REFUSED:
        snprintf(out, cap, "nothing listens at %s", hp);
        break;
    case SB_REASON_CONNECT_TIMEOUT:
        snprintf(out, cap, "nothing answered a TCP connect to %s in time: host down or firewalled",
                 hp);
        break;
    case SB_REASON_TLS_ERROR:
        snprintf(out, cap, "the TLS handshake failed: certificate, CA or protocol mismatch");
        break;
    case SB_REASON_UPSTREAM_FORBIDDEN:
        snprintf(out, cap, "the address is in a forbidden range; see --allow-upstream");
        break;
    case SB_REASON_HTTP_401:
    case SB_REASON_HTTP_403:
        snprintf(out, cap,
                 "the agent rejected switchboard's inbound secret — check it uses the "
                 "inbound_secret from registration");
        break;
    case SB_REASON_HTTP_404:
        snprintf(out, cap, "the agent does not serve A2A at that path");
        break;
    case SB_REASON_HTTP_405:
        snprintf(out, cap, "the agent does not accept POST at that path");
        break;
    case SB_REASON_HTTP_413:
        snprintf(out, cap, "the agent refused the message as too large");
        break;
    case SB_REASON_HTTP_429:
        snprintf(out, cap, "the agent is rate-limiting switchboard");
        break;
    case SB_REASON_HTTP_5XX:
        snprintf(out, cap, "the agent failed with a server error");
        break;
    case SB_REASON_HTTP_OTHER:
        snprintf(out, cap,
                 "the agent answered a status that is neither success nor a known "
                 "failure, e.g. a redirect");
        break;
    case SB_REASON_RESPONSE_TIMEOUT:
        snprintf(out, cap,
                 "the agent took the request but did not answer within "
                 "--push-timeout-s");
        break;
    case SB_REASON_CONNECTION_RESET:
        snprintf(out, cap, "the agent closed the connection before answering");
        break;
    case SB_REASON_INVALID_RESPONSE:
        snprintf(out, cap, "the agent answered 2xx but not with a JSON-RPC response");
        break;
    default:
        snprintf(out, cap, "delivered");
        break;
    }
}

static int is_http_reason(sb_reason r)
{
    return r >= SB_REASON_HTTP_401 && r <= SB_REASON_HTTP_OTHER;
}

/* "host:port" of |url| (scheme and path dropped) into |out|; "" when it has none. */
static void host_port(const char *url, char *out, size_t cap)
{
    out[0] = '\0';
    if (url == NULL)
        return;
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    int explicit_port = memchr(p, ':', n) != NULL && p[0] != '[';
    if (p[0] == '[')
        explicit_port = strstr(p, "]:") != NULL && (size_t)(strstr(p, "]:") - p) < n;
    snprintf(out, cap, "%.*s%s", (int)n, p,
             explicit_port ? "" : (strncmp(url, "https", 5) == 0 ? ":443" : ":80"));
}

static void times_since(sbuf *b, const sb_verdict_facts *f, long long count, int64_t since)
{
    if (count <= 0)
        return;
    put(b, " %lld time%s", count, count == 1 ? "" : "s");
    if (since > 0) {
        char t[32];
        clock_time(since, f->now_ms, t);
        put(b, " since %s", t);
    }
}

/* "POST <url> answered 404 (the agent does not serve A2A at that path) 12 times since
 * 14:02" or "POST <url> failed with connect_refused (nothing listens at h:p) ...". */
static void failure_clause(sbuf *b, const sb_verdict_facts *f)
{
    char hp[300], why[256];
    host_port(f->url, hp, sizeof(hp));
    sb_verdict_explain(f->fail_reason, hp[0] ? hp : NULL, why, sizeof(why));
    const char *url = f->url ? f->url : "the registered URL";
    if (is_http_reason(f->fail_reason) && f->fail_status > 0)
        put(b, "POST %s answered %d (%s)", url, f->fail_status, why);
    else
        put(b, "POST %s failed with %s (%s)", url, sb_reason_name(f->fail_reason), why);
    times_since(b, f, f->fail_count, f->fail_since_ms);
}

/* The URL the agent's card advertises instead of the registered one: the card the
 * agent sent with its registration wins (it is the agent's own statement), else the
 * probed card's. NULL when neither disagrees. */
static const char *advertised_elsewhere(const sb_verdict_facts *f)
{
    if (f->card_mismatch && f->card_advertised != NULL)
        return f->card_advertised;
    if (f->probe_mismatch && f->probe_advertised != NULL)
        return f->probe_advertised;
    return NULL;
}

static void probe_clause(sbuf *b, const sb_verdict_facts *f)
{
    const char *other = advertised_elsewhere(f);
    if (other != NULL)
        put(b, "; its agent card advertises %s", other);
    else if (f->probe_unreachable)
        put(b, "; its agent card could not be fetched at registration");
}

/* Why the last register or heartbeat was refused, in the operator's terms. */
static void refusal_why(sbuf *b, const sb_verdict_facts *f)
{
    if (f->refused_status == 403 && f->refused_token_workspace != NULL) {
        put(b, "the token belongs to workspace `%s`", f->refused_token_workspace);
    } else if (f->refused_status == 401) {
        put(b, "%s", f->refused_message ? f->refused_message : "the token is not known");
    } else if (f->refused_code != NULL && strcmp(f->refused_code, "invalid_json") != 0 &&
               f->refused_message != NULL) {
        put(b, "%s (%s)", f->refused_message, f->refused_code);
    } else {
        put(b, "HTTP %d %s", f->refused_status, f->refused_code ? f->refused_code : "");
    }
}

/* "; the last register attempt, at 14:02 UTC, was refused: <why>" when a refusal came
 * after the current registration (or there is none); one that came before it is named
 * as such while it is recent (the agent's deployment may still use the wrong token). */
static void refusal_clause(sbuf *b, const sb_verdict_facts *f)
{
    if (f->refused_at_ms <= 0)
        return;
    const char *route = f->refused_route ? f->refused_route : "register";
    char t[32];
    clock_time(f->refused_at_ms, f->now_ms, t);
    if (!f->registered || f->refused_at_ms >= f->registered_at_ms) {
        put(b, "; the last %s attempt, at %s, was refused: ", route, t);
        refusal_why(b, f);
    } else if (f->now_ms - f->refused_at_ms < REFUSAL_RECENT_MS) {
        put(b, "; a %s attempt at %s, before the current registration, was refused: ", route, t);
        refusal_why(b, f);
    }
}

static int consumer_active(const sb_verdict_facts *f)
{
    return f->leased > 0 ||
           (f->last_lease_ms > 0 && f->now_ms - f->last_lease_ms < CONSUMER_ACTIVE_MS);
}

/* "the last, at 14:02:11, was refused (circuit_open)" — what switchboard's last
 * redelivery try got. */
static void last_try_clause(sbuf *b, const sb_verdict_facts *f)
{
    const char *o = f->redeliver_last_outcome;
    if (f->redeliver_last_ms <= 0 || o == NULL || o[0] == '\0')
        return;
    char t[32];
    clock_time_s(f->redeliver_last_ms, f->now_ms, 1, t);
    if (strcmp(o, "delivered") == 0)
        put(b, "; the last, at %s, was delivered", t);
    else if (strncmp(o, "refused: ", 9) == 0)
        put(b, "; the last, at %s, was refused (%s)", t, o + 9);
    else
        put(b, "; the last, at %s, failed with %s", t, o);
}

/* When switchboard tries the backlog next (SPEC §4.4): "switchboard retries it itself:
 * next retry in 40 s; the last, at 14:02:11, was refused (circuit_open)". */
static void redelivery_clause(sbuf *b, const sb_verdict_facts *f)
{
    if (f->redeliver_next_ms > f->now_ms) {
        char in[32];
        span((double)(f->redeliver_next_ms - f->now_ms + 999) / 1000.0, in);
        put(b, "; switchboard redelivers them itself: next retry in %s", in);
    } else {
        put(b, "; switchboard redelivers them itself: the next retry is due now");
    }
    last_try_clause(b, f);
}

/* The backlog: how much waits, how old, and whether anyone takes it. |pushing| 1 for a
 * push-mode agent, 2 for one whose lease lapsed, 0 for poll mode. */
static void queue_clause(sbuf *b, const sb_verdict_facts *f, int pushing)
{
    if (f->depth > 0) {
        char age[32];
        span(f->oldest_age_s, age);
        put(b, "; %lld message%s wait%s in the queue (oldest %s)", f->depth,
            f->depth == 1 ? "" : "s", f->depth == 1 ? "s" : "", age);
        if (f->leased > 0) {
            put(b, ", %lld leased%s", f->leased, pushing == 1 ? "" : " by a consumer");
        } else if (!consumer_active(f) && pushing != 1) {
            char t[32];
            if (f->last_lease_ms > 0) {
                clock_time(f->last_lease_ms, f->now_ms, t);
                put(b, " and nothing has leased from it since %s", t);
            } else {
                put(b, " and no inbox consumer has leased from it");
            }
            if (pushing == 2)
                put(b, " (switchboard redelivers them after the agent's next register or "
                       "heartbeat)");
        }
        if (pushing == 1)
            redelivery_clause(b, f);
    }
    if (f->dead_letters > 0)
        put(b, "; %lld dead letter%s", f->dead_letters, f->dead_letters == 1 ? "" : "s");
}

static void fallback_since(sbuf *b, const sb_verdict_facts *f, sb_reason r)
{
    if (f->streak_reason == r)
        times_since(b, f, f->streak_count, f->streak_since_ms);
}

/* An ordered workspace whose new messages queue behind its backlog. */
static void backlog_sentence(sbuf *b, const sb_verdict_facts *f)
{
    put(b,
        "Messages are queued in order (backlog): the workspace is registered ordered, so new "
        "messages wait behind the older ones still queued for %s",
        f->url ? f->url : "the agent");
    fallback_since(b, f, SB_REASON_BACKLOG);
    queue_clause(b, f, 1);
}

size_t sb_verdict_write(const sb_verdict_facts *f, char *out, size_t cap)
{
    sbuf b = {out, cap, 0};
    if (cap > 0)
        out[0] = '\0';
    char t[32];
    if (!f->registered) {
        put(&b, "Messages fall back to poll (no_endpoint): no endpoint is registered for this "
                "workspace");
        fallback_since(&b, f, SB_REASON_NO_ENDPOINT);
        refusal_clause(&b, f);
        queue_clause(&b, f, 0);
    } else if (f->poll_mode) {
        put(&b,
            "Messages are queued by design (poll_mode): the workspace is registered with "
            "delivery_mode poll, so its own inbox consumer drains them with GET "
            "/workspaces/%s/inbox",
            f->workspace_id ? f->workspace_id : "{ws}");
        if (f->depth == 0 && f->dead_letters == 0)
            put(&b, "; the queue is empty");
        queue_clause(&b, f, 0);
    } else if (f->lease_expires_at_ms > 0 && f->lease_expires_at_ms <= f->now_ms) {
        clock_time(f->lease_expires_at_ms, f->now_ms, t);
        put(&b,
            "Messages fall back to poll (lease_expired): the registration of %s lapsed at %s "
            "without a heartbeat (the agent must renew it with POST /registry/heartbeat)",
            f->url ? f->url : "the agent", t);
        fallback_since(&b, f, SB_REASON_LEASE_EXPIRED);
        refusal_clause(&b, f);
        queue_clause(&b, f, 2);
    } else if (f->circuit_open) {
        put(&b, "Messages fall back to poll (circuit_open, on this instance): ");
        if (f->fail_count > 0 && f->fail_reason != SB_REASON_NONE) {
            failure_clause(&b, f);
        } else {
            put(&b, "%d consecutive pushes to %s failed", f->circuit_failures,
                f->url ? f->url : "the agent");
            if (f->circuit_last_reason != SB_REASON_NONE)
                put(&b, " (last: %s)", sb_reason_name(f->circuit_last_reason));
        }
        if (f->circuit_retry_at_ms > 0) {
            clock_time_s(f->circuit_retry_at_ms, f->now_ms, 1, t);
            put(&b, ", so pushes pause until a probe push after %s succeeds", t);
        } else {
            put(&b, ", so pushes pause until the probe push in flight succeeds");
        }
        probe_clause(&b, f);
        refusal_clause(&b, f);
        queue_clause(&b, f, 1);
    } else if (f->fail_count > 0 && f->fail_reason != SB_REASON_NONE) {
        put(&b, "Messages fall back to poll: ");
        failure_clause(&b, f);
        probe_clause(&b, f);
        refusal_clause(&b, f);
        queue_clause(&b, f, 1);
    } else if (f->streak_reason == SB_REASON_BUSY && f->streak_since_ms >= f->last_delivered_ms) {
        if (f->max_concurrency > 0)
            put(&b,
                "Some messages fall back to poll (busy): pushes in flight to %s reached "
                "max_concurrency %d",
                f->url ? f->url : "the agent", f->max_concurrency);
        else
            put(&b,
                "Some messages fall back to poll (busy): pushes in flight to %s reached the "
                "instance's limit for agents without max_concurrency "
                "(--max-inflight-per-endpoint; the agent may not be answering)",
                f->url ? f->url : "the agent");
        fallback_since(&b, f, SB_REASON_BUSY);
        put(&b, "; the others are pushed");
        queue_clause(&b, f, 1);
    } else if (f->ordered && f->streak_reason == SB_REASON_BACKLOG && f->depth > 0 &&
               f->streak_since_ms >= f->last_delivered_ms) {
        backlog_sentence(&b, f);
    } else if (f->last_delivered_ms > 0) {
        clock_time(f->last_delivered_ms, f->now_ms, t);
        put(&b, "Messages are pushed: the last push to %s was delivered at %s",
            f->url ? f->url : "the agent", t);
        if (f->last_push_status > 0)
            put(&b, " (HTTP %d)", f->last_push_status);
        probe_clause(&b, f);
        refusal_clause(&b, f);
        queue_clause(&b, f, 1);
    } else {
        put(&b, "Messages are pushed to %s; none has been pushed yet",
            f->url ? f->url : "the registered URL");
        if (advertised_elsewhere(f) != NULL)
            put(&b, ", and its agent card advertises %s, so pushes may fail",
                advertised_elsewhere(f));
        else if (f->probe_unreachable)
            put(&b, ", and its agent card could not be fetched at registration");
        refusal_clause(&b, f);
        queue_clause(&b, f, 1);
    }
    put(&b, ".");
    return b.len;
}
