/*
 * config.h — the daemon's settings, from flags and SWITCHBOARD_* environment variables.
 *
 * Every flag --some-flag also reads SWITCHBOARD_SOME_FLAG; a flag on the command line
 * wins over the environment, and an empty variable counts as unset. docs/configuration.md
 * is the reference for every flag. The config is parsed once in main() before any thread
 * starts and is read-only afterwards, so workers read it without locks.
 */
#ifndef SWITCHBOARD_CONFIG_H
#define SWITCHBOARD_CONFIG_H

#include <stddef.h>

#include "switchboard/netaddr.h"

typedef struct sb_config {
    char *listen;     /* "HOST:PORT", default "127.0.0.1:8080" */
    char *tls_listen; /* NULL unless given; then tls_cert and tls_key are set and readable */
    char *tls_cert;
    char *tls_key;
    char *redis_url;         /* default "redis://127.0.0.1:6379"; "unix:///path.sock" accepted.
                                Only the shape is checked here: call sb_redis_url_check too */
    char *admin_token;       /* never NULL after a successful parse; visible ASCII only */
    int threads;             /* default: cores this process may run on (affinity), 1..256 */
    int connect_timeout_ms;  /* 3000 */
    int push_timeout_s;      /* 300 */
    size_t max_body_bytes;   /* 4 MiB */
    int queue_ttl_s;         /* 7 days */
    int pushed_record_ttl_s; /* 600; 0: pushed messages get no record */
    int lease_s;             /* 60 */
    int max_deliveries;      /* 5 */
    int retry_max_s;         /* 300: longest wait between redelivery attempts */
    sb_cidr *allow_upstream; /* repeatable --allow-upstream; env: comma-separated list */
    size_t n_allow_upstream;
    int log_json; /* 1: --log-format json (default), 0: text */
    /* Not in SPEC §1, documented in docs/configuration.md: */
    size_t max_header_bytes;       /* --max-header-bytes, 16 KiB: request line + headers */
    int idle_timeout_s;            /* --idle-timeout-s, 60: keep-alive connection idle */
    int request_timeout_s;         /* --request-timeout-s, 30: whole request head+body arrival */
    int shutdown_timeout_s;        /* --shutdown-timeout-s, 25: bound on draining in-flight work */
    int max_inflight_per_endpoint; /* --max-inflight-per-endpoint, 64: pushes in flight to one
                                      workspace (per instance) without max_concurrency; 0:
                                      unlimited (docs/operations.md, "Bounds") */
    int redis_command_timeout_ms;  /* --redis-command-timeout-ms, 10000: a Redis reply later
                                      than this drops the connection (redis.h watchdog) */
    char *upstream_ca;             /* --upstream-ca FILE: PEM CA certificates trusted for https
                                      agents in addition to the system store; NULL: none. Checked
                                      to hold at least one certificate */
} sb_config;

/* Fills |cfg| from |argv| (argv[0] is the program name and is skipped) and the
 * environment. |cfg|'s previous contents are overwritten, not released: pass a fresh or
 * cleared one. Accepts "--flag value" and "--flag=value"; a repeated flag keeps its last
 * value, except --allow-upstream which accumulates (and then replaces, not extends, the
 * SWITCHBOARD_ALLOW_UPSTREAM list).
 *
 * Returns SB_OK, or SB_ERR_INVALID with one human-readable line (no trailing newline)
 * in |err| naming the flag or variable and the bad value: unknown flag, missing or
 * empty value, non-numeric or out-of-range number, bad HOST:PORT, CIDR, Redis URL shape
 * or log format, unreadable TLS or token file, incomplete TLS settings, an --upstream-ca
 * file without a PEM certificate, no admin token.
 * The admin token and the Redis URL (it may hold a password) are never echoed. On
 * failure the partly filled |cfg| must still be released with sb_config_clear.
 *
 * --help or -h anywhere in |argv| prints usage (every flag, its env variable and default)
 * to stdout and exits the process with status 0; --version anywhere (after no --help)
 * prints "switchboard VERSION" and exits 0. */
int sb_config_parse(sb_config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Releases every string and array |cfg| owns (the admin token is wiped first) and zeroes
 * it. Safe on a zeroed or partly filled cfg, and twice. */
void sb_config_clear(sb_config *cfg);

/* Splits "HOST:PORT" or "[V6]:PORT" into |host| (capacity |hostcap|, brackets removed)
 * and |port|. HOST is a name of [A-Za-z0-9._-] or an IPv4 literal; V6 holds hex digits,
 * ':' and '.' with an optional "%zone". PORT is decimal 1..65535 (0 is refused: the
 * daemon always listens on a port it can report). Unbracketed IPv6 and an empty host are
 * refused. Returns SB_OK, or SB_ERR_INVALID leaving |host| and |port| untouched. */
int sb_config_split_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
