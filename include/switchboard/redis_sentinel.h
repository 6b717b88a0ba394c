/*
 * redis_sentinel.h — finds the Redis master through Redis Sentinel and follows it across
 * failovers, for redis.c's connections (SPEC §1 `redis+sentinel://`).
 *
 * URL: redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master-name
 *      [?db=N][&user=U][&password=P][&sentinel_user=U][&sentinel_password=P]
 * The hosts are sentinels (default port 26379; IPv6 in brackets). The userinfo (or the
 * user/password parameters) are the master's credentials, as for redis://. Sentinels get
 * sentinel_user/sentinel_password when given; otherwise the master's credentials too
 * ("same password for both"), and a sentinel that has no password configured and refuses
 * that AUTH is asked without it. %XX escapes are decoded; errors never echo a password.
 *
 * One watcher thread per process (started by the first sb_sentinel_master_addr after a
 * URL is parsed) keeps the current master: it subscribes to +switch-master on a
 * sentinel first (so no switch falls between an answer and the subscription), then asks
 * the sentinels in turn (SENTINEL get-master-addr-by-name) and checks the answer with
 * ROLE on that server before trusting it (a sentinel may name a demoted master during a
 * failover). It asks again after every switch (trying the announced address first, since
 * the other sentinels may not have heard of it yet), every 5 s, and at once when a
 * connection reports a demoted master (sb_sentinel_suspect). Every change of
 * the master bumps a generation: redis.c drops connections made to an older one. The
 * thread uses blocking hiredis calls, bounded by short timeouts, and never touches an
 * event loop.
 *
 * Threads: every function is safe from any thread.
 */
#ifndef SWITCHBOARD_REDIS_SENTINEL_H
#define SWITCHBOARD_REDIS_SENTINEL_H

#include <stddef.h>

#define SB_SENTINEL_SCHEME "redis+sentinel://"
#define SB_SENTINEL_DEFAULT_PORT 26379

/* The master's credentials and database from a sentinel URL (owned strings; user and
 * password NULL when none). */
typedef struct sb_sentinel_creds {
    char *user;
    char *password;
    int db;
    char name[128]; /* the master name, for messages */
} sb_sentinel_creds;

/* 1 when |url| uses the redis+sentinel scheme. */
int sb_sentinel_url_is(const char *url);

/* Parses a sentinel URL. On SB_OK |out| holds the master's credentials (release with
 * sb_sentinel_creds_clear) and the URL becomes the process's Sentinel configuration (a
 * different URL replaces it and restarts the discovery). SB_ERR_INVALID with a reason in
 * |err| otherwise; |out| is then empty. */
int sb_sentinel_url_parse(const char *url, sb_sentinel_creds *out, char *err, size_t errlen);

/* Frees the strings of |c| (the password wiped first). */
void sb_sentinel_creds_clear(sb_sentinel_creds *c);

/* Asks the sentinels now, synchronously (start-up check), each bounded by |timeout_ms|,
 * and checks the master's ROLE. SB_OK with the address in |host|/|port|, or
 * SB_ERR_UNAVAILABLE with one line in |err|. Requires a parsed URL. */
int sb_sentinel_discover(int timeout_ms, char *host, size_t hostlen, int *port, char *err,
                         size_t errlen);

/* The current master: SB_OK with |host|, |port| and its generation in |gen|;
 * SB_ERR_UNAVAILABLE while none is known (the watcher keeps trying). Starts the watcher
 * thread on first use. */
int sb_sentinel_master_addr(char *host, size_t hostlen, int *port, unsigned long *gen);

/* The generation of the current master (0 before one is known). */
unsigned long sb_sentinel_generation(void);

/* A connection saw the master refuse writes (READONLY) or answer ROLE as a replica: asks
 * the watcher to query the sentinels at once. */
void sb_sentinel_suspect(const char *why);

/* Stops the watcher thread and forgets the configuration (tests, process exit). */
void sb_sentinel_stop(void);

#endif
