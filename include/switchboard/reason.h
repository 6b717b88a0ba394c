/*
 * reason.h — the closed list of reasons a message is not pushed (SPEC §4.2).
 *
 * These names are the only values of "reason" anywhere: headers, queue entries,
 * delivery records, metrics labels and logs all go through sb_reason_name(), so a typo
 * cannot invent a new reason. Pre-push reasons come from the decision order; push
 * reasons are classified from the real failure (errno, resolver result, HTTP status,
 * timeout phase, malformed answer).
 */
#ifndef SWITCHBOARD_REASON_H
#define SWITCHBOARD_REASON_H

typedef enum {
    SB_REASON_NONE = 0, /* delivered: no fallback */
    /* decision order, before any push */
    SB_REASON_NO_ENDPOINT,
    SB_REASON_POLL_MODE,
    SB_REASON_LEASE_EXPIRED,
    SB_REASON_BACKLOG, /* an ordered workspace with queued messages */
    SB_REASON_CIRCUIT_OPEN,
    SB_REASON_BUSY,
    /* a push that failed */
    SB_REASON_DNS_ERROR,
    SB_REASON_CONNECT_REFUSED,
    SB_REASON_CONNECT_TIMEOUT,
    SB_REASON_TLS_ERROR,
    SB_REASON_UPSTREAM_FORBIDDEN,
    SB_REASON_HTTP_401,
    SB_REASON_HTTP_403,
    SB_REASON_HTTP_404,
    SB_REASON_HTTP_405,
    SB_REASON_HTTP_413,
    SB_REASON_HTTP_429,
    SB_REASON_HTTP_5XX,
    SB_REASON_HTTP_OTHER,
    SB_REASON_RESPONSE_TIMEOUT,
    SB_REASON_CONNECTION_RESET,
    SB_REASON_INVALID_RESPONSE,
    SB_REASON__COUNT
} sb_reason;

/* The wire name ("connect_refused", ...); "" for SB_REASON_NONE. */
const char *sb_reason_name(sb_reason r);

/* Reverse of sb_reason_name; SB_REASON_NONE for unknown names. */
sb_reason sb_reason_from_name(const char *name);

/* The reason for an upstream HTTP status that is not a delivered answer:
 * 401/403/404/405/413/429 map to their own reason, 5xx to http_5xx, anything else
 * that is not 2xx to http_other. Returns SB_REASON_NONE for 2xx. */
sb_reason sb_reason_from_http_status(int status);

/* 1 when a push that failed with |r| may have reached the agent (SPEC §4.3 "attempted"):
 * response_timeout, connection_reset, invalid_response. */
int sb_reason_attempted(sb_reason r);

#endif
