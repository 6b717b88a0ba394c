/*
 * fuzz_redis_url.c — the --redis URL parsers (redis_url.c) and the reading of Redis
 * Cluster redirects (redis_cluster.c).
 *
 * Input: one URL string (a NUL ends it early). The parsers are reached through
 * src/redis_int.h, the private interface redis.c and redis_cluster.c share. What parses
 * must be a TCP address (host and a port in 1..65535), a unix socket path, or a
 * redis+sentinel:// URL (sentinel hosts and the master name: redis_sentinel.c; no
 * address until Sentinel names one), with a printable "where" that names the address
 * and not the credentials; a redis+cluster:// URL must give 1..SB_CLUSTER_MAX_SEEDS
 * seeds, each a host and a valid port; what does not parse must say why in one line.
 * The public sb_redis_url_check must agree. The same text read as an error reply
 * ("MOVED 3999 127.0.0.1:6381") must name a slot below 16384 and a valid port whenever
 * it is a redirect.
 * Corpus: tests/corpus/redis_url/.
 */
#include "fuzz.h"

#include "../../src/redis_int.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/redis_cluster.h"

static void check_where(const redis_url *u)
{
    fuzz_check(u->where[0] != '\0');
    /* "where" names the address only, never "user:password@". */
    if (strchr(u->where, '@') != NULL)
        fuzz_check((u->host != NULL && strchr(u->host, '@') != NULL) ||
                   (u->path != NULL && strchr(u->path, '@') != NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet_logs();
    char *s = fuzz_cstr(data, size);
    redis_url u;
    char err[256];
    err[0] = '\0';
    int rc;
    if (sb_redis_is_cluster_url(s)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n = 0;
        rc = sb_redis_cluster_url_parse(s, &u, seeds, &n, err, sizeof(err));
        if (rc == SB_OK) {
            fuzz_check(n >= 1 && n <= SB_CLUSTER_MAX_SEEDS);
            for (size_t i = 0; i < n; i++)
                fuzz_check(seeds[i].host[0] != '\0' && seeds[i].port >= 1 &&
                           seeds[i].port <= 65535);
            fuzz_check(u.db == 0);
            check_where(&u);
            sb_redis_url_clear(&u);
        }
    } else {
        rc = sb_redis_url_parse(s, &u, err, sizeof(err));
        if (rc == SB_OK) {
            /* redis+sentinel:// names no address: the master's comes from Sentinel later. */
            if (u.sentinel)
                fuzz_check(u.host == NULL && u.path == NULL);
            else
                fuzz_check((u.host != NULL) != (u.path != NULL));
            if (u.host != NULL)
                fuzz_check(u.port >= 1 && u.port <= 65535);
            check_where(&u);
            sb_redis_url_clear(&u);
        }
    }
    if (rc != SB_OK)
        fuzz_check(err[0] != '\0' && strchr(err, '\n') == NULL);
    char err2[256];
    fuzz_check((sb_redis_url_check(s, err2, sizeof(err2)) == SB_OK) == (rc == SB_OK));

    unsigned slot = 0;
    char host[64];
    int port = 0;
    sb_cluster_err kind = sb_cluster_parse_error(s, &slot, host, sizeof(host), &port);
    if (kind == SB_CLUSTER_ERR_MOVED || kind == SB_CLUSTER_ERR_ASK)
        fuzz_check(slot < SB_CLUSTER_SLOTS && port >= 1 && port <= 65535 &&
                   strlen(host) < sizeof(host));
    sb_free(s);
    return 0;
}
