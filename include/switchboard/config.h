/*
 * config.h — the daemon's settings, from flags and SWITCHBOARD_* environment variables.
 *
 * Every flag --some-flag also reads SWITCHBOARD_SOME_FLAG; a flag on the command line
 * wins over the environment. The config is parsed once in main() before any thread
 * starts and is read-only afterwards, so workers read it without locks.
 */
#ifndef SWITCHBOARD_CONFIG_H
#define SWITCHBOARD_CONFIG_H

#include <stddef.h>

#include "switchboard/netaddr.h"

typedef struct sb_config {
    char *listen;     /* "HOST:PORT", default "127.0.0.1:8080" */
    char *tls_listen; /* NULL unless given */
    char *tls_cert;
    char *tls_key;
    char *redis_url;  /* default "redis://127.0.0.1:6379"; "unix:///path.sock" accepted */
    char *admin_token;
    int threads;      /* default: number of online cores */
    int connect_timeout_ms;   /* 3000 */
    int push_timeout_s;       /* 300 */
    size_t max_body_bytes;    /* 4 MiB */
    int queue_ttl_s;          /* 7 days */
    int lease_s;              /* 60 */
    int max_deliveries;       /* 5 */
    sb_cidr *allow_upstream;  /* repeatable --allow-upstream */
    size_t n_allow_upstream;
    int log_json;             /* 1: --log-format json (default), 0: text */
    /* Not in SPEC §1, documented in docs/configuration.md: */
    size_t max_header_bytes;  /* --max-header-bytes, 16 KiB: request line + headers */
    int idle_timeout_s;       /* --idle-timeout-s, 60: keep-alive connection idle */
    int request_timeout_s;    /* --request-timeout-s, 30: whole request head+body arrival */
    int shutdown_timeout_s;   /* --shutdown-timeout-s, 25: bound on draining in-flight work */
} sb_config;

/* Fills |cfg| from |argv| and the environment. On failure returns SB_ERR_INVALID with one
 * human-readable line (no trailing newline) in |err|; the partly filled |cfg| must still
 * be released with sb_config_clear. --help prints usage to stdout and exits 0. */
int sb_config_parse(sb_config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Releases every string and array |cfg| owns. Safe on a zeroed or partly filled cfg. */
void sb_config_clear(sb_config *cfg);

/* Splits "HOST:PORT" or "[V6]:PORT" into |host| (capacity |hostcap|) and |port|.
 * Returns SB_OK or SB_ERR_INVALID. */
int sb_config_split_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
