/*
 * reason.c — names and classification of fallback reasons (see reason.h).
 */
#include "switchboard/reason.h"

#include <string.h>

static const char *const names[SB_REASON__COUNT] = {
    [SB_REASON_NONE] = "",
    [SB_REASON_NO_ENDPOINT] = "no_endpoint",
    [SB_REASON_POLL_MODE] = "poll_mode",
    [SB_REASON_LEASE_EXPIRED] = "lease_expired",
    [SB_REASON_BACKLOG] = "backlog",
    [SB_REASON_CIRCUIT_OPEN] = "circuit_open",
    [SB_REASON_BUSY] = "busy",
    [SB_REASON_DNS_ERROR] = "dns_error",
    [SB_REASON_CONNECT_REFUSED] = "connect_refused",
    [SB_REASON_CONNECT_TIMEOUT] = "connect_timeout",
    [SB_REASON_TLS_ERROR] = "tls_error",
    [SB_REASON_UPSTREAM_FORBIDDEN] = "upstream_forbidden",
    [SB_REASON_HTTP_401] = "http_401",
    [SB_REASON_HTTP_403] = "http_403",
    [SB_REASON_HTTP_404] = "http_404",
    [SB_REASON_HTTP_405] = "http_405",
    [SB_REASON_HTTP_413] = "http_413",
    [SB_REASON_HTTP_429] = "http_429",
    [SB_REASON_HTTP_5XX] = "http_5xx",
    [SB_REASON_HTTP_OTHER] = "http_other",
    [SB_REASON_RESPONSE_TIMEOUT] = "response_timeout",
    [SB_REASON_CONNECTION_RESET] = "connection_reset",
    [SB_REASON_INVALID_RESPONSE] = "invalid_response",
};

const char *sb_reason_name(sb_reason r)
{
    if ((int)r < 0 || r >= SB_REASON__COUNT)
        return "";
    return names[r];
}

sb_reason sb_reason_from_name(const char *name)
{
    for (int i = 1; i < SB_REASON__COUNT; i++)
        if (strcmp(names[i], name) == 0)
            return (sb_reason)i;
    return SB_REASON_NONE;
}

sb_reason sb_reason_from_http_status(int status)
{
    switch (status) {
    case 401:
        return SB_REASON_HTTP_401;
    case 403:
        return SB_REASON_HTTP_403;
    case 404:
        return SB_REASON_HTTP_404;
    case 405:
        return SB_REASON_HTTP_405;
    case 413:
        return SB_REASON_HTTP_413;
    case 429:
        return SB_REASON_HTTP_429;
    default:
        break;
    }
    if (status >= 200 && status < 300)
        return SB_REASON_NONE;
    if (status >= 500 && status < 600)
        return SB_REASON_HTTP_5XX;
    return SB_REASON_HTTP_OTHER;
}

int sb_reason_attempted(sb_reason r)
{
    return r == SB_REASON_RESPONSE_TIMEOUT || r == SB_REASON_CONNECTION_RESET ||
           r == SB_REASON_INVALID_RESPONSE;
}
