/*
 * verdict.h — the one sentence that tells an operator why a workspace gets push or poll
 * (SPEC §5.3 "verdict").
 *
 * A pure function: facts in (registration, circuit, the per-workspace delivery counters
 * kept in Redis, the queue, the registration probe), one plain sentence out. It never
 * touches Redis, the registry or a clock, so unit tests (tests/unit/test_verdict.c) pin
 * every wording. The handlers (handler_delivery.c) gather the facts.
 *
 * The sentence names the reason, the endpoint, how many times since when, the last HTTP
 * status, the plain explanation of the reason (e.g. http_404: "the agent does not serve
 * A2A at that path"), and the probe's finding when the agent card advertises another URL
 * than the registered one — the card given at registration first, else the probed one
 * — and the last refused register or heartbeat when it came after the current
 * registration (or there is none). Examples per reason: docs/operations.md.
 *
 * Never: put a secret, a token or anything from a request body into the sentence.
 */
#ifndef SWITCHBOARD_VERDICT_H
#define SWITCHBOARD_VERDICT_H

#include <stddef.h>
#include <stdint.h>

#include "switchboard/reason.h"

/* Everything the verdict may use. Strings are borrowed; NULL means unknown or none, and
 * times (epoch ms) are 0 when unknown. */
typedef struct sb_verdict_facts {
    const char *workspace_id;
    int64_t now_ms;

    /* registration (the registry replica) */
    int registered;
    int poll_mode;               /* registered with delivery_mode poll */
    const char *url;             /* the registered URL */
    int64_t lease_expires_at_ms; /* 0: no lease */
    int max_concurrency;         /* 0: unlimited */

    /* this instance's circuit breaker (circuit.h) */
    int circuit_open; /* open or half-open */
    int circuit_failures;
    sb_reason circuit_last_reason;
    int64_t circuit_retry_at_ms;
    int inflight;

    /* the per-workspace counters in Redis (record.h) */
    long long pushes;          /* delivered pushes (drained ones included) */
    long long fallbacks;       /* messages not pushed */
    sb_reason streak_reason;   /* the reason of the current run of fallbacks, NONE: none */
    long long streak_count;    /* fallbacks in a row with that reason */
    int64_t streak_since_ms;   /* when that run began */
    sb_reason fail_reason;     /* the reason of the current run of failed pushes */
    long long fail_count;      /* failed pushes in a row since the last delivered one */
    int64_t fail_since_ms;     /* when that run began */
    int fail_status;           /* the last failed push's HTTP status, 0: none */
    int64_t last_delivered_ms; /* 0: none recorded */
    int last_push_status;      /* HTTP status of the last push, 0: none */
    int64_t last_lease_ms;     /* last time anyone leased from the queue, 0: never */

    /* the queue */
    int ordered;     /* registered "ordered": new messages wait behind a backlog */
    long long depth; /* queued + leased */
    long long leased;
    long long dead_letters;
    double oldest_age_s;

    /* switchboard's own redelivery of the queue (retry.h) */
    int64_t redeliver_next_ms;          /* the next scheduled try, 0: none */
    int64_t redeliver_last_ms;          /* the last try that pushed or failed, 0: none */
    const char *redeliver_last_outcome; /* "delivered", a reason, "refused: <reason>" */

    /* the registration probe */
    int probe_mismatch;           /* 1: the card advertises other URLs than the registered */
    const char *probe_advertised; /* the first URL it advertises */
    int probe_unreachable;        /* 1: the card could not be fetched at all */
    int64_t probe_at_ms;          /* when the probe ran (0: unknown) */

    /* the agent card given in the register body (compared like the probed one) */
    int card_mismatch;           /* 1: it advertises other URLs than the registered */
    const char *card_advertised; /* the first URL it advertises */

    /* the last refused register or heartbeat naming this workspace (refusal.h) */
    int64_t registered_at_ms;            /* when the current registration was made */
    int64_t refused_at_ms;               /* 0: none kept */
    const char *refused_route;           /* "register" or "heartbeat" */
    int refused_status;                  /* 400, 401, 403 */
    const char *refused_code;            /* the error code answered */
    const char *refused_message;         /* the error message answered (switchboard's) */
    const char *refused_token_workspace; /* the token's own workspace, when valid */
} sb_verdict_facts;

/* Writes the verdict for |f| into |out| (capacity |cap|, always NUL-terminated when
 * |cap| > 0; a sentence that does not fit is cut). Returns the length the whole sentence
 * needs (as snprintf). */
size_t sb_verdict_write(const sb_verdict_facts *f, char *out, size_t cap);

/* The plain explanation of |r| for operators, e.g. "the agent does not serve A2A at that
 * path" for http_404; |hostport| (may be NULL) names the endpoint for connect reasons.
 * Writes into |out| (capacity |cap|). */
void sb_verdict_explain(sb_reason r, const char *hostport, char *out, size_t cap);

#endif
