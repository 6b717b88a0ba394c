/*
 * redis_url.c — Redis URLs and the blocking start-up calls (see redis.h, redis_int.h).
 *
 * Parses redis://, unix:// and redis+cluster:// URLs into a redis_url (owned strings;
 * the password is wiped when freed) and runs the few synchronous calls made at start,
 * before any loop runs: the ping (and the cluster detection of sb_redis_resolve_sync),
 * one GET and one keyless script (the key layout migration). Each step of those is
 * bounded by the caller's timeout; errors name the address, never the password.
 */
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/redis_cluster.h"
#include "switchboard/redis_sentinel.h"
#include "switchboard/util.h"

#include "redis_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* ---- URL ---- */

void sb_redis_url_clear(redis_url *u)
{
    sb_free(u->host);
    sb_free(u->path);
    sb_free(u->user);
    if (u->password != NULL) {
        memset(u->password, 0, strlen(u->password));
        sb_free(u->password);
    }
    memset(u, 0, sizeof(*u));
}

static int parse_int(const char *s, size_t n, long min, long max, int *out)
{
    char buf[16];
    long v;
    if (n == 0 || n >= sizeof(buf))
        return SB_ERR_INVALID;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (sb_parse_long(buf, min, max, &v) != SB_OK)
        return SB_ERR_INVALID;
    *out = (int)v;
    return SB_OK;
}

/* Query parameters db, user and password, for both schemes. */
static int parse_query(const char *q, redis_url *u, char *err, size_t errlen)
{
    while (*q != '\0') {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (eq == NULL) {
            snprintf(err, errlen, "query parameters must be name=value");
            return SB_ERR_INVALID;
        }
        size_t nlen = (size_t)(eq - q), vlen = len - nlen - 1;
        const char *v = eq + 1;
        if (nlen == 2 && strncmp(q, "db", 2) == 0) {
            if (parse_int(v, vlen, 0, 1000000, &u->db) != SB_OK) {
                snprintf(err, errlen, "db must be a number from 0");
                return SB_ERR_INVALID;
            }
        } else if ((nlen == 8 && strncmp(q, "password", 8) == 0) ||
                   (nlen == 4 && strncmp(q, "user", 4) == 0)) {
            char **dst = nlen == 4 ? &u->user : &u->password;
            char *val = sb_pct_decode(v, vlen);
            if (val == NULL) {
                snprintf(err, errlen, "bad %%-escape in the %s parameter",
                         nlen == 4 ? "user" : "password");
                return SB_ERR_INVALID;
            }
            sb_free(*dst);
            *dst = val;
        } else {
            snprintf(err, errlen, "unknown query parameter (known: db, user, password)");
            return SB_ERR_INVALID;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return SB_OK;
}

static int valid_host(const char *h, int v6)
{
    if (*h == '\0')
        return 0;
    for (; *h; h++) {
        unsigned char c = (unsigned char)*h;
        if (v6 ? !(isxdigit(c) || c == ':' || c == '.' || c == '%')
               : !(isalnum(c) || c == '.' || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* Parses |s| into |u| (owned strings). SB_OK, or SB_ERR_INVALID with |err| filled and
 * |u| cleared. */
int sb_redis_url_parse(const char *s, redis_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof(*u));
    u->port = 6379;
    if (s == NULL || *s == '\0') {
        snprintf(err, errlen, "empty Redis URL");
        return SB_ERR_INVALID;
    }
    if (sb_sentinel_url_is(s)) {
        sb_sentinel_creds c;
        if (sb_sentinel_url_parse(s, &c, err, errlen) != SB_OK)
            goto fail;
        u->user = c.user; /* ownership moves to |u| */
        u->password = c.password;
        u->db = c.db;
        u->sentinel = 1;
        snprintf(u->where, sizeof(u->where), "master %s (Sentinel)", c.name);
        return SB_OK;
    }
    if (strncmp(s, "unix://", 7) == 0) {
        const char *p = s + 7;
        size_t plen = strcspn(p, "?");
        if (plen < 2 || p[0] != '/') {
            snprintf(err, errlen, "unix URLs look like unix:///path/to/redis.sock");
            goto fail;
        }
        u->path = sb_strndup(p, plen);
        snprintf(u->where, sizeof(u->where), "%s", u->path);
        if (p[plen] == '?' && parse_query(p + plen + 1, u, err, errlen) != SB_OK)
            goto fail;
        return SB_OK;
    }
    if (strncmp(s, "rediss://", 9) == 0) {
        snprintf(err, errlen, "rediss:// (TLS) is not supported by this build; use redis://");
        goto fail;
    }
    if (strncmp(s, "redis://", 8) != 0) {
        snprintf(err, errlen,
                 "the Redis URL must start with redis://, unix://, redis+sentinel:// or "
                 "redis+cluster://");
        goto fail;
    }
    const char *a = s + 8;
    size_t alen = strcspn(a, "/?");
    const char *rest = a + alen;
    /* The last '@' of the authority ends the userinfo (passwords may hold '@' escaped). */
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (a[i] == '@')
            at = a + i;
    const char *hp = a;
    if (at != NULL) {
        const char *colon = memchr(a, ':', (size_t)(at - a));
        if (colon != NULL) {
            if (colon > a && (u->user = sb_pct_decode(a, (size_t)(colon - a))) == NULL)
                goto bad_escape;
            if ((u->password = sb_pct_decode(colon + 1, (size_t)(at - colon - 1))) == NULL)
                goto bad_escape;
        } else if ((u->password = sb_pct_decode(a, (size_t)(at - a))) == NULL) {
            goto bad_escape;
        }
        if (u->password != NULL && u->password[0] == '\0') {
            sb_free(u->password);
            u->password = NULL;
        }
        hp = at + 1;
    }
    size_t hplen = (size_t)(a + alen - hp);
    const char *portp = NULL;
    size_t portlen = 0;
    int v6 = 0;
    if (hplen > 0 && hp[0] == '[') {
        const char *close = memchr(hp, ']', hplen);
        if (close == NULL) {
            snprintf(err, errlen, "unterminated [IPv6] host in the Redis URL");
            goto fail;
        }
        u->host = sb_strndup(hp + 1, (size_t)(close - hp - 1));
        v6 = 1;
        if (close + 1 < hp + hplen) {
            if (close[1] != ':') {
                snprintf(err, errlen, "unexpected text after ] in the Redis URL");
                goto fail;
            }
            portp = close + 2;
            portlen = (size_t)(hp + hplen - portp);
        }
    } else {
        const char *colon = memchr(hp, ':', hplen);
        size_t hlen = colon ? (size_t)(colon - hp) : hplen;
        u->host = sb_strndup(hp, hlen);
        if (colon != NULL) {
            portp = colon + 1;
            portlen = (size_t)(hp + hplen - portp);
        }
    }
    if (!valid_host(u->host, v6)) {
        snprintf(err, errlen, "the Redis URL needs a valid host");
        goto fail;
    }
    if (portp != NULL && parse_int(portp, portlen, 1, 65535, &u->port) != SB_OK) {
        snprintf(err, errlen, "the Redis port must be a number from 1 to 65535");
        goto fail;
    }
    if (*rest == '/') {
        size_t dlen = strcspn(rest + 1, "?");
        if (dlen > 0 && parse_int(rest + 1, dlen, 0, 1000000, &u->db) != SB_OK) {
            snprintf(err, errlen, "the Redis URL path must be a database number (/0)");
            goto fail;
        }
        rest += 1 + dlen;
    }
    if (*rest == '?' && parse_query(rest + 1, u, err, errlen) != SB_OK)
        goto fail;
    snprintf(u->where, sizeof(u->where), v6 ? "[%s]:%d" : "%s:%d", u->host, u->port);
    return SB_OK;
bad_escape:
    snprintf(err, errlen, "bad %%-escape in the user or password of the Redis URL");
fail:
    sb_redis_url_clear(u);
    return SB_ERR_INVALID;
}

#define CLUSTER_SCHEME "redis+cluster://"

/* redis+cluster://[userinfo@]h1:p1[,h2:p2…][?user=U&password=P]: every seed is parsed as
 * redis://[userinfo@]hN:pN[?query] (so credentials work as for redis://); the seeds go to
 * |seeds|, the credentials of the first to |u|. A database other than 0 is refused. */
int sb_redis_cluster_url_parse(const char *s, redis_url *u, sb_cluster_addr *seeds, size_t *nseeds,
                               char *err, size_t errlen)
{
    const char *a = s + strlen(CLUSTER_SCHEME);
    size_t alen = strcspn(a, "/?");
    const char *query = a + alen;
    if (*query == '/') {
        size_t dlen = strcspn(query + 1, "?");
        if (!(dlen == 0 || (dlen == 1 && query[1] == '0'))) {
            snprintf(err, errlen, "a Redis Cluster has only database 0");
            return SB_ERR_INVALID;
        }
        query += 1 + dlen;
    }
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (a[i] == '@')
            at = a + i;
    size_t ulen = at ? (size_t)(at - a) + 1 : 0;
    const char *hosts = a + ulen;
    size_t hlen = alen - ulen;
    *nseeds = 0;
    memset(u, 0, sizeof(*u));
    while (hlen > 0) {
        size_t one = 0;
        while (one < hlen && hosts[one] != ',')
            one++;
        if (*nseeds >= SB_CLUSTER_MAX_SEEDS) {
            snprintf(err, errlen, "at most %d Redis Cluster seed nodes", SB_CLUSTER_MAX_SEEDS);
            sb_redis_url_clear(u);
            return SB_ERR_INVALID;
        }
        size_t n = 8 + ulen + one + strlen(query) + 1;
        char *one_url = sb_malloc(n);
        snprintf(one_url, n, "redis://%.*s%.*s%s", (int)ulen, a, (int)one, hosts, query);
        redis_url v;
        int rc = sb_redis_url_parse(one_url, &v, err, errlen);
        memset(one_url, 0, n);
        sb_free(one_url);
        if (rc != SB_OK) {
            sb_redis_url_clear(u);
            return SB_ERR_INVALID;
        }
        snprintf(seeds[*nseeds].host, sizeof(seeds[*nseeds].host), "%s", v.host);
        seeds[*nseeds].port = v.port;
        (*nseeds)++;
        if (u->where[0] == '\0')
            *u = v; /* the first seed's credentials and address */
        else
            sb_redis_url_clear(&v);
        hosts += one;
        hlen -= one;
        if (hlen > 0) { /* the ',' */
            hosts++;
            hlen--;
            if (hlen == 0)
                break;
        }
    }
    if (*nseeds == 0) {
        snprintf(err, errlen, "redis+cluster:// needs at least one host:port");
        return SB_ERR_INVALID;
    }
    if (u->db != 0) { /* a ?db= query parameter: the path form is refused above */
        snprintf(err, errlen, "a Redis Cluster has only database 0");
        sb_redis_url_clear(u);
        return SB_ERR_INVALID;
    }
    return SB_OK;
}

int sb_redis_is_cluster_url(const char *url)
{
    return url != NULL && strncmp(url, CLUSTER_SCHEME, strlen(CLUSTER_SCHEME)) == 0;
}

int sb_redis_url_check(const char *url, char *err, size_t errlen)
{
    redis_url u;
    if (sb_redis_is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (sb_redis_cluster_url_parse(url, &u, seeds, &n, err, errlen) != SB_OK)
            return SB_ERR_INVALID;
        sb_redis_url_clear(&u);
        return SB_OK;
    }
    if (sb_redis_url_parse(url, &u, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    sb_redis_url_clear(&u);
    return SB_OK;
}

/* ---- synchronous start-up check ---- */

/* Runs one handshake command; SB_OK when the reply is not an error. */
static int sync_step(redisContext *c, const redis_url *u, const char *what, char *err,
                     size_t errlen, int argc, const char **argv)
{
    redisReply *rep = redisCommandArgv(c, argc, argv, NULL);
    if (rep == NULL) {
        snprintf(err, errlen, "Redis at %s: %s failed: %s", u->where, what,
                 c->errstr[0] ? c->errstr : "no answer");
        return SB_ERR_UNAVAILABLE;
    }
    int rc = SB_OK;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* Server error texts never contain the password we sent. */
        snprintf(err, errlen, "Redis at %s refused %s: %s", u->where, what, rep->str);
        rc = SB_ERR_UNAVAILABLE;
    }
    freeReplyObject(rep);
    return rc;
}

/* A blocking connection to |u| after AUTH and SELECT, every step bounded by |timeout_ms|;
 * NULL with |err| filled. */
static redisContext *sync_open(const redis_url *u, int timeout_ms, char *err, size_t errlen)
{
    if (timeout_ms <= 0)
        timeout_ms = SB_REDIS_CONNECT_TIMEOUT_MS;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    char master[256];
    const char *host = u->host;
    int port = u->port;
    if (u->sentinel) { /* ask the sentinels in turn which server is the master now */
        if (sb_sentinel_discover(timeout_ms, master, sizeof(master), &port, err, errlen) != SB_OK)
            return NULL;
        host = master;
    }
    redisContext *c = u->path ? redisConnectUnixWithTimeout(u->path, tv)
                              : redisConnectWithTimeout(host, port, tv);
    if (c == NULL || c->err) {
        snprintf(err, errlen, "cannot connect to Redis at %s: %s", u->where,
                 c ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    int rc = SB_OK;
    if (u->password != NULL) {
        const char *argv[3] = {"AUTH", u->user ? u->user : u->password, u->password};
        rc = sync_step(c, u, "AUTH", err, errlen, u->user ? 3 : 2, argv);
    }
    if (rc == SB_OK && u->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", u->db);
        const char *argv[2] = {"SELECT", db};
        rc = sync_step(c, u, "SELECT", err, errlen, 2, argv);
    }
    if (rc != SB_OK) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* PING |u|; with |cluster| set, also INFO cluster, setting *|cluster| to 1 for a node with
 * cluster_enabled:1. */
static int ping_url(const redis_url *u, int timeout_ms, int *cluster, char *err, size_t errlen)
{
    redisContext *c = sync_open(u, timeout_ms, err, errlen);
    if (c == NULL)
        return SB_ERR_UNAVAILABLE;
    const char *argv[1] = {"PING"};
    int rc = sync_step(c, u, "PING", err, errlen, 1, argv);
    if (rc == SB_OK && cluster != NULL) {
        redisReply *rep = redisCommand(c, "INFO cluster");
        *cluster = rep != NULL && rep->type == REDIS_REPLY_STRING &&
                   strstr(rep->str, "cluster_enabled:1") != NULL;
        if (rep != NULL)
            freeReplyObject(rep);
    }
    redisFree(c);
    return rc;
}

/* One blocking command on a connection of its own to the (non-cluster) Redis of |url|:
 * SB_OK with its reply in |*rep| (the caller frees it; never an error reply), else an
 * error code with |err| set. |no_cluster| says why a cluster URL is refused, |what|
 * names the command in messages. */
static int sync_command(const char *url, int timeout_ms, const char *no_cluster, const char *what,
                        redisReply **rep, char *err, size_t errlen, const char *fmt,
                        const char *arg)
{
    redis_url u;
    *rep = NULL;
    if (sb_redis_is_cluster_url(url)) {
        snprintf(err, errlen, "%s", no_cluster);
        return SB_ERR_INVALID;
    }
    if (sb_redis_url_parse(url, &u, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    redisContext *c = sync_open(&u, timeout_ms, err, errlen);
    int rc = SB_ERR_UNAVAILABLE;
    if (c != NULL) {
        redisReply *r = redisCommand(c, fmt, arg);
        if (r == NULL) {
            snprintf(err, errlen, "Redis at %s: no answer to %s", u.where, what);
        } else if (r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "Redis at %s: %s failed: %.200s", u.where, what, r->str);
            freeReplyObject(r);
            rc = SB_ERR;
        } else {
            *rep = r;
            rc = SB_OK;
        }
        redisFree(c);
    }
    sb_redis_url_clear(&u);
    return rc;
}

int sb_redis_get_sync(const char *url, int timeout_ms, const char *key, char *out, size_t outlen,
                      char *err, size_t errlen)
{
    redisReply *rep;
    out[0] = '\0';
    int rc = sync_command(url, timeout_ms, "not for a Redis Cluster", "GET", &rep, err, errlen,
                          "GET %s", key);
    if (rc != SB_OK)
        return rc;
    if (rep->type == REDIS_REPLY_STRING)
        snprintf(out, outlen, "%s", rep->str);
    else if (rep->type != REDIS_REPLY_NIL) {
        snprintf(err, errlen, "Redis: GET failed: unexpected reply");
        rc = SB_ERR;
    }
    freeReplyObject(rep);
    return rc;
}

int sb_redis_eval_sync(const char *url, int timeout_ms, const char *script, long long *result,
                       char *err, size_t errlen)
{
    redisReply *rep;
    int rc = sync_command(url, timeout_ms, "a script without keys cannot run on a Redis Cluster",
                          "a script", &rep, err, errlen, "EVAL %s 0", script);
    if (rc != SB_OK)
        return rc;
    if (rep->type == REDIS_REPLY_INTEGER) {
        *result = rep->integer;
    } else {
        snprintf(err, errlen, "Redis: script failed: not an integer");
        rc = SB_ERR;
    }
    freeReplyObject(rep);
    return rc;
}

int sb_redis_ping_sync(const char *url, int timeout_ms, char *err, size_t errlen)
{
    char *resolved = NULL;
    int rc = sb_redis_resolve_sync(url, timeout_ms, &resolved, err, errlen);
    sb_free(resolved);
    return rc;
}

int sb_redis_resolve_sync(const char *url, int timeout_ms, char **resolved, char *err,
                          size_t errlen)
{
    redis_url u;
    *resolved = NULL;
    if (sb_redis_is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (sb_redis_cluster_url_parse(url, &u, seeds, &n, err, errlen) != SB_OK)
            return SB_ERR_INVALID;
        int rc = SB_ERR_UNAVAILABLE;
        for (size_t i = 0; i < n && rc != SB_OK; i++) { /* any seed will do */
            sb_free(u.host);
            u.host = sb_strdup(seeds[i].host);
            u.port = seeds[i].port;
            snprintf(u.where, sizeof(u.where), "%s:%d", u.host, u.port);
            rc = ping_url(&u, timeout_ms, NULL, err, errlen);
        }
        sb_redis_url_clear(&u);
        if (rc == SB_OK)
            *resolved = sb_strdup(url);
        return rc;
    }
    if (sb_redis_url_parse(url, &u, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    int cluster = 0;
    int rc = ping_url(&u, timeout_ms, u.path ? NULL : &cluster, err, errlen);
    sb_redis_url_clear(&u);
    if (rc != SB_OK)
        return rc;
    if (!cluster) {
        *resolved = sb_strdup(url);
        return SB_OK;
    }
    /* A cluster node: the same address and credentials as a seed of the cluster. */
    size_t n = strlen(CLUSTER_SCHEME) + strlen(url) + 1;
    char *c = sb_malloc(n);
    snprintf(c, n, "%s%s", CLUSTER_SCHEME, url + strlen("redis://"));
    sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
    size_t ns;
    if (sb_redis_cluster_url_parse(c, &u, seeds, &ns, err, errlen) != SB_OK) {
        memset(c, 0, n);
        sb_free(c);
        return SB_ERR_INVALID;
    }
    sb_redis_url_clear(&u);
    *resolved = c;
    return SB_OK;
}
