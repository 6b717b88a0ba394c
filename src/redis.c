/*
 * redis.c — one async Redis connection per loop, reconnecting with back-off (see redis.h).
 *
 * Lifecycle of a connection attempt: IDLE → (retry timer) → CONNECTING (hiredis async
 * connect, connect timer armed) → HANDSHAKE (TCP is up; AUTH, SELECT, then PING or
 * SUBSCRIBE, one after the other) → UP (timer disarmed, watchdog armed) → back to IDLE
 * on any loss, with the back-off doubling from 100 ms to 5 s (reset once UP).
 *
 * hiredis ownership rules this file lives by:
 *  - hiredis frees the context itself after a failed connect (after the connect
 *    callback) and after a lost connection (after the disconnect callback). We only
 *    forget our pointer there.
 *  - We free a context ourselves (redisAsyncFree) only from libevent callbacks of our
 *    own (timers, the abort event) or from sb_redis_free — never from inside a hiredis
 *    callback, where hiredis would free it a second time. A handshake failure seen in a
 *    reply callback therefore activates |abort_ev| instead.
 *  - Before freeing a context ourselves we clear ac->data, so the disconnect callback
 *    hiredis runs during the free knows the teardown is ours and does nothing.
 * Pending command callbacks always run (with NULL on teardown): hiredis runs each
 * registered callback exactly once, and every user callback is wrapped in a small
 * cmd_ctx that does not point back into the context.
 *
 * Never: queue commands while down, log a password, or block the loop (except the
 * getaddrinfo inside hiredis' connect, documented in redis.h).
 */
#include "switchboard/redis.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/redis_cluster.h"
#include "switchboard/util.h"

#include "redis_int.h"

#include <ctype.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define WATCHDOG_TICK_MS 250

/* ---- URL ---- */

typedef struct redis_url {
    char *host; /* TCP: host (IPv6 without brackets); NULL for unix sockets */
    int port;
    char *path; /* unix socket path, or NULL */
    char *user; /* NULL when none */
    char *password;
    int db;
    char where[300]; /* printable address for messages: "host:port" or the path */
} redis_url;

static void url_clear(redis_url *u)
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

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes |n| bytes at |s| into a new string; NULL for a bad escape or NUL. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = sb_malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                sb_free(out);
                return NULL;
            }
            int a = hexval((unsigned char)s[i + 1]), b = hexval((unsigned char)s[i + 2]);
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                sb_free(out);
                return NULL;
            }
            out[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
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
            char *val = pct_decode(v, vlen);
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
static int url_parse(const char *s, redis_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof(*u));
    u->port = 6379;
    if (s == NULL || *s == '\0') {
        snprintf(err, errlen, "empty Redis URL");
        return SB_ERR_INVALID;
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
        snprintf(err, errlen, "the Redis URL must start with redis:// or unix://");
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
            if (colon > a && (u->user = pct_decode(a, (size_t)(colon - a))) == NULL)
                goto bad_escape;
            if ((u->password = pct_decode(colon + 1, (size_t)(at - colon - 1))) == NULL)
                goto bad_escape;
        } else if ((u->password = pct_decode(a, (size_t)(at - a))) == NULL) {
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
    url_clear(u);
    return SB_ERR_INVALID;
}

#define CLUSTER_SCHEME "redis+cluster://"

/* redis+cluster://[userinfo@]h1:p1[,h2:p2…][?user=U&password=P]: every seed is parsed as
 * redis://[userinfo@]hN:pN[?query] (so credentials work as for redis://); the seeds go to
 * |seeds|, the credentials of the first to |u|. A database other than 0 is refused. */
static int cluster_url_parse(const char *s, redis_url *u, sb_cluster_addr *seeds, size_t *nseeds,
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
            url_clear(u);
            return SB_ERR_INVALID;
        }
        size_t n = 8 + ulen + one + strlen(query) + 1;
        char *one_url = sb_malloc(n);
        snprintf(one_url, n, "redis://%.*s%.*s%s", (int)ulen, a, (int)one, hosts, query);
        redis_url v;
        int rc = url_parse(one_url, &v, err, errlen);
        memset(one_url, 0, n);
        sb_free(one_url);
        if (rc != SB_OK) {
            url_clear(u);
            return SB_ERR_INVALID;
        }
        snprintf(seeds[*nseeds].host, sizeof(seeds[*nseeds].host), "%s", v.host);
        seeds[*nseeds].port = v.port;
        (*nseeds)++;
        if (u->where[0] == '\0')
            *u = v; /* the first seed's credentials and address */
        else
            url_clear(&v);
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
    return SB_OK;
}

static int is_cluster_url(const char *url)
{
    return url != NULL && strncmp(url, CLUSTER_SCHEME, strlen(CLUSTER_SCHEME)) == 0;
}

int sb_redis_url_check(const char *url, char *err, size_t errlen)
{
    redis_url u;
    if (is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (cluster_url_parse(url, &u, seeds, &n, err, errlen) != SB_OK)
            return SB_ERR_INVALID;
        url_clear(&u);
        return SB_OK;
    }
    if (url_parse(url, &u, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    url_clear(&u);
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

/* Connect, AUTH, SELECT and PING |u|, each bounded by |timeout_ms|; with |cluster| set,
 * also INFO cluster, setting *|cluster| to 1 for a node with cluster_enabled:1. */
static int ping_url(const redis_url *u, int timeout_ms, int *cluster, char *err, size_t errlen)
{
    if (timeout_ms <= 0)
        timeout_ms = SB_REDIS_CONNECT_TIMEOUT_MS;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    redisContext *c = u->path ? redisConnectUnixWithTimeout(u->path, tv)
                              : redisConnectWithTimeout(u->host, u->port, tv);
    int rc = SB_OK;
    if (c == NULL || c->err) {
        snprintf(err, errlen, "cannot connect to Redis at %s: %s", u->where,
                 c ? c->errstr : "out of memory");
        rc = SB_ERR_UNAVAILABLE;
        goto out;
    }
    redisSetTimeout(c, tv);
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
    if (rc == SB_OK) {
        const char *argv[1] = {"PING"};
        rc = sync_step(c, u, "PING", err, errlen, 1, argv);
    }
    if (rc == SB_OK && cluster != NULL) {
        redisReply *rep = redisCommand(c, "INFO cluster");
        *cluster = rep != NULL && rep->type == REDIS_REPLY_STRING &&
                   strstr(rep->str, "cluster_enabled:1") != NULL;
        if (rep != NULL)
            freeReplyObject(rep);
    }
out:
    if (c != NULL)
        redisFree(c);
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
    if (is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (cluster_url_parse(url, &u, seeds, &n, err, errlen) != SB_OK)
            return SB_ERR_INVALID;
        int rc = SB_ERR_UNAVAILABLE;
        for (size_t i = 0; i < n && rc != SB_OK; i++) { /* any seed will do */
            sb_free(u.host);
            u.host = sb_strdup(seeds[i].host);
            u.port = seeds[i].port;
            snprintf(u.where, sizeof(u.where), "%s:%d", u.host, u.port);
            rc = ping_url(&u, timeout_ms, NULL, err, errlen);
        }
        url_clear(&u);
        if (rc == SB_OK)
            *resolved = sb_strdup(url);
        return rc;
    }
    if (url_parse(url, &u, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    int cluster = 0;
    int rc = ping_url(&u, timeout_ms, u.path ? NULL : &cluster, err, errlen);
    url_clear(&u);
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
    if (cluster_url_parse(c, &u, seeds, &ns, err, errlen) != SB_OK) {
        memset(c, 0, n);
        sb_free(c);
        return SB_ERR_INVALID;
    }
    url_clear(&u);
    *resolved = c;
    return SB_OK;
}

/* ---- the async connection ---- */

typedef enum { ST_IDLE = 0, ST_CONNECTING, ST_HANDSHAKE, ST_UP } conn_state;

/* Handshake steps, in order; steps that do not apply are skipped. */
typedef enum { HS_AUTH = 0, HS_SELECT, HS_FINAL, HS_DONE } hs_step;

struct sb_redis {
    struct event_base *base;
    redis_url url;
    redisAsyncContext *ac; /* current context, or NULL */
    int state;             /* conn_state; read atomically by sb_redis_is_up */
    hs_step step;
    int backoff_ms;
    int connect_timeout_ms;
    int command_timeout_ms;
    struct event *retry_ev;    /* back-off timer: next connection attempt */
    struct event *timeout_ev;  /* bounds CONNECTING + HANDSHAKE */
    struct event *abort_ev;    /* drops the connection from outside hiredis callbacks */
    struct event *watchdog_ev; /* periodic check for commands without replies */
    sb_redis_state_fn on_state;
    void *state_arg;
    char *channel; /* subscriber mode when set */
    sb_redis_message_fn on_message;
    void *message_arg;
    size_t pending;       /* user commands sent and not yet called back */
    uint64_t progress_us; /* last reply, or the moment |pending| left 0 */
    unsigned long connects;
    int logged_down;        /* 1 once "redis_down" was logged for the current outage */
    unsigned attempt;       /* counts connection attempts */
    unsigned abort_attempt; /* the attempt |abort_ev| was activated for */
    int freeing;
    char error[160];       /* why the last attempt failed (no secrets) */
    sb_cluster *cluster;   /* a Redis Cluster facade: every command goes through it */
    sb_redis_pick_fn pick; /* chooses the address of each attempt, or NULL */
    void *pick_arg;
};

typedef struct cmd_ctx {
    sb_redis *r;
    sb_redis_reply_fn cb;
    void *arg;
    uint64_t sent_us; /* for switchboard_redis_command_duration_seconds */
} cmd_ctx;

static void start_connect(sb_redis *r);

static void set_state(sb_redis *r, conn_state s)
{
    __atomic_store_n(&r->state, (int)s, __ATOMIC_RELAXED);
}

static struct timeval ms_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static void schedule_retry(sb_redis *r)
{
    if (r->freeing)
        return;
    struct timeval tv = ms_tv(r->backoff_ms);
    evtimer_add(r->retry_ev, &tv);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Bookkeeping after a connection or an attempt ended (the context is gone or going). */
static void connection_lost(sb_redis *r, int was_up, const char *why)
{
    evtimer_del(r->timeout_ev);
    evtimer_del(r->watchdog_ev);
    if (why != NULL && why[0] != '\0' && why != r->error)
        snprintf(r->error, sizeof(r->error), "%s", why);
    if (was_up || !r->logged_down) {
        sb_log(SB_LOG_WARN, "redis_down", "Redis at %s %s: %s; retrying with back-off",
               r->url.where, was_up ? "connection lost" : "unreachable", r->error);
        r->logged_down = 1;
    }
    schedule_retry(r);
    if (was_up && r->on_state != NULL)
        r->on_state(r, 0, r->state_arg);
}

/* Frees the current context ourselves. Only from our own libevent callbacks or
 * sb_redis_free: never from inside a hiredis callback. */
static void drop_connection(sb_redis *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    int was_up = r->state == ST_UP;
    r->ac = NULL;
    set_state(r, ST_IDLE);
    if (ac != NULL) {
        ac->data = NULL; /* our disconnect callback must ignore this teardown */
        redisAsyncFree(ac);
    }
    connection_lost(r, was_up, why);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    sb_redis *r = arg;
    char why[64];
    snprintf(why, sizeof(why), "no answer within %d ms", r->connect_timeout_ms);
    drop_connection(r, why);
}

static void on_abort(evutil_socket_t fd, short what, void *arg)
{
    sb_redis *r = arg;
    if (r->ac != NULL && r->abort_attempt == r->attempt)
        drop_connection(r, r->error);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    start_connect(arg);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    sb_redis *r = arg;
    if (r->state != ST_UP || r->pending == 0)
        return;
    uint64_t waited = sb_now_mono_us() - r->progress_us;
    if (waited > (uint64_t)r->command_timeout_ms * 1000u) {
        char why[96];
        snprintf(why, sizeof(why), "%zu command(s) without a reply for %d ms", r->pending,
                 r->command_timeout_ms);
        drop_connection(r, why);
    }
}

/* Asks the loop to drop the connection soon (safe inside hiredis callbacks). */
static void abort_soon(sb_redis *r, const char *why)
{
    snprintf(r->error, sizeof(r->error), "%s", why);
    r->abort_attempt = r->attempt;
    event_active(r->abort_ev, EV_TIMEOUT, 0);
}

static void became_up(sb_redis *r)
{
    set_state(r, ST_UP);
    r->step = HS_DONE;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->connects++;
    evtimer_del(r->timeout_ev);
    struct timeval tv = ms_tv(WATCHDOG_TICK_MS);
    evtimer_add(r->watchdog_ev, &tv);
    if (r->logged_down)
        sb_log(SB_LOG_INFO, "redis_up", "Redis at %s is connected again", r->url.where);
    r->logged_down = 0;
    r->error[0] = '\0';
    if (r->on_state != NULL)
        r->on_state(r, 1, r->state_arg);
}

static void on_handshake_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends the next handshake command that applies, from step |r->step| on. */
static void handshake_next(sb_redis *r)
{
    int rc = REDIS_OK;
    char db[16];
    switch (r->step) {
    case HS_AUTH:
        if (r->url.password != NULL) {
            if (r->url.user != NULL)
                rc = redisAsyncCommand(r->ac, on_handshake_reply, r, "AUTH %s %s", r->url.user,
                                       r->url.password);
            else
                rc = redisAsyncCommand(r->ac, on_handshake_reply, r, "AUTH %s", r->url.password);
            break;
        }
        r->step = HS_SELECT;
        /* fall through */
    case HS_SELECT:
        if (r->url.db != 0) {
            snprintf(db, sizeof(db), "%d", r->url.db);
            rc = redisAsyncCommand(r->ac, on_handshake_reply, r, "SELECT %s", db);
            break;
        }
        r->step = HS_FINAL;
        /* fall through */
    case HS_FINAL:
        if (r->channel != NULL)
            rc = redisAsyncCommand(r->ac, on_sub_reply, r, "SUBSCRIBE %s", r->channel);
        else
            rc = redisAsyncCommand(r->ac, on_handshake_reply, r, "PING");
        break;
    case HS_DONE:
        return;
    }
    if (rc != REDIS_OK)
        abort_soon(r, "cannot send the handshake");
}

static void on_handshake_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    sb_redis *r = privdata;
    redisReply *rep = reply;
    if (rep == NULL || r->ac != ac || r->state != ST_HANDSHAKE)
        return; /* the connection is being torn down; the disconnect path handles it */
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "%s refused: %.100s",
                 r->step == HS_AUTH     ? "AUTH"
                 : r->step == HS_SELECT ? "SELECT"
                                        : "PING",
                 rep->str);
        abort_soon(r, why);
        return;
    }
    if (r->step == HS_FINAL) {
        became_up(r);
        return;
    }
    r->step++;
    handshake_next(r);
}

/* The SUBSCRIBE callback: hiredis calls it for the confirmation and for every message. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    sb_redis *r = privdata;
    redisReply *rep = reply;
    if (rep == NULL || r->ac != ac)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "SUBSCRIBE refused: %.100s", rep->str);
        abort_soon(r, why);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rep->element[0]->str;
    if (strcmp(kind, "subscribe") == 0) {
        if (r->state == ST_HANDSHAKE)
            became_up(r);
    } else if (strcmp(kind, "message") == 0 && rep->element[2]->type == REDIS_REPLY_STRING) {
        if (r->on_message != NULL)
            r->on_message(rep->element[1]->str, rep->element[2]->str, rep->element[2]->len,
                          r->message_arg);
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    sb_redis *r = cac->data;
    if (r == NULL || r->ac != cac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this callback. */
        char why[160];
        snprintf(why, sizeof(why), "connect: %s", cac->errstr ? cac->errstr : "failed");
        r->ac = NULL;
        set_state(r, ST_IDLE);
        connection_lost(r, 0, why);
        return;
    }
    set_state(r, ST_HANDSHAKE);
    if (r->url.path == NULL)
        redisEnableKeepAlive(&r->ac->c); /* TCP only: it fails (and poisons c->err) on unix */
    r->step = HS_AUTH;
    handshake_next(r);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    sb_redis *r = cac->data;
    if (r == NULL || r->ac != cac)
        return; /* a teardown we started (drop_connection, sb_redis_free) */
    /* hiredis frees the context right after this callback. */
    char why[160];
    snprintf(why, sizeof(why), "%s",
             status == REDIS_OK ? "closed" : (cac->errstr[0] ? cac->errstr : "I/O error"));
    int was_up = r->state == ST_UP;
    r->ac = NULL;
    set_state(r, ST_IDLE);
    connection_lost(r, was_up, why);
}

static void start_connect(sb_redis *r)
{
    if (r->freeing || r->ac != NULL)
        return;
    char host[256];
    int port;
    if (r->pick != NULL && r->url.path == NULL &&
        r->pick(r->pick_arg, host, sizeof(host), &port) == 0) {
        sb_free(r->url.host);
        r->url.host = sb_strdup(host);
        r->url.port = port;
        snprintf(r->url.where, sizeof(r->url.where), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
                 port);
    }
    redisAsyncContext *ac = r->url.path ? redisAsyncConnectUnix(r->url.path)
                                        : redisAsyncConnect(r->url.host, r->url.port);
    if (ac == NULL || ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "connect: %s", ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac); /* not attached, not in a callback */
        connection_lost(r, 0, why);
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->attempt++;
    set_state(r, ST_CONNECTING);
    r->step = HS_AUTH;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    struct timeval tv = ms_tv(r->connect_timeout_ms);
    evtimer_add(r->timeout_ev, &tv);
}

/* Everything of a new sb_redis but its URL and the first attempt. */
static sb_redis *redis_alloc(struct event_base *base, sb_redis_state_fn on_state, void *arg)
{
    sb_redis *r = sb_calloc(1, sizeof(*r));
    r->base = base;
    r->on_state = on_state;
    r->state_arg = arg;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->connect_timeout_ms = SB_REDIS_CONNECT_TIMEOUT_MS;
    r->command_timeout_ms = SB_REDIS_COMMAND_TIMEOUT_MS;
    r->retry_ev = evtimer_new(base, on_retry, r);
    r->timeout_ev = evtimer_new(base, on_timeout, r);
    r->abort_ev = event_new(base, -1, 0, on_abort, r);
    r->watchdog_ev = event_new(base, -1, EV_PERSIST, on_watchdog, r);
    return r;
}

sb_redis *sb_redis_new(struct event_base *base, const char *url, sb_redis_state_fn on_state,
                       void *arg)
{
    char err[256];
    redis_url u;
    if (is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (cluster_url_parse(url, &u, seeds, &n, err, sizeof(err)) != SB_OK)
            return NULL;
        sb_redis *r = redis_alloc(base, on_state, arg);
        r->url = u;
        r->cluster = sb_cluster_new(r, base, seeds, n, u.user, u.password);
        return r;
    }
    if (url_parse(url, &u, err, sizeof(err)) != SB_OK)
        return NULL;
    sb_redis *r = redis_alloc(base, on_state, arg);
    r->url = u;
    start_connect(r);
    return r;
}

sb_redis *sb_redis_new_plain(struct event_base *base, const char *host, int port, const char *user,
                             const char *password, sb_redis_pick_fn pick, void *pick_arg,
                             sb_redis_state_fn on_state, void *arg)
{
    sb_redis *r = redis_alloc(base, on_state, arg);
    r->url.host = sb_strdup(host);
    r->url.port = port;
    r->url.user = user ? sb_strdup(user) : NULL;
    r->url.password = password ? sb_strdup(password) : NULL;
    snprintf(r->url.where, sizeof(r->url.where), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
             port);
    r->pick = pick;
    r->pick_arg = pick_arg;
    start_connect(r);
    return r;
}

void sb_redis_facade_state(sb_redis *r, int up)
{
    int was = r->state == ST_UP;
    set_state(r, up ? ST_UP : ST_IDLE);
    if (up)
        r->connects++;
    if (was != up && r->on_state != NULL && !r->freeing)
        r->on_state(r, up, r->state_arg);
}

const char *sb_redis_where(const sb_redis *r)
{
    return r->url.where;
}

void sb_redis_set_timeouts(sb_redis *r, int connect_ms, int command_ms)
{
    if (r->cluster != NULL) {
        sb_cluster_set_timeouts(r->cluster, connect_ms, command_ms);
        return;
    }
    if (connect_ms > 0) {
        r->connect_timeout_ms = connect_ms;
        if (r->ac != NULL && r->state != ST_UP) {
            struct timeval tv = ms_tv(connect_ms); /* re-arms the attempt under way */
            evtimer_add(r->timeout_ev, &tv);
        }
    }
    if (command_ms > 0)
        r->command_timeout_ms = command_ms;
}

void sb_redis_subscribe(sb_redis *r, const char *channel, sb_redis_message_fn on_message, void *arg)
{
    sb_free(r->channel);
    r->channel = sb_strdup(channel);
    r->on_message = on_message;
    r->message_arg = arg;
    if (r->cluster != NULL)
        sb_cluster_subscribe(r->cluster, channel, on_message, arg);
}

static void on_command_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cmd_ctx *c = privdata;
    sb_redis *r = c->r;
    r->pending--;
    r->progress_us = sb_now_mono_us();
    if (reply != NULL) /* NULL: dropped with the connection, never answered */
        sb_metrics_redis_command(r->progress_us - c->sent_us);
    if (c->cb != NULL)
        c->cb(reply, c->arg);
    sb_free(c);
}

/* Checks that a command may be sent and prepares its context; NULL with |*rc| set. */
static cmd_ctx *command_begin(sb_redis *r, sb_redis_reply_fn cb, void *arg, int *rc)
{
    if (r == NULL || __atomic_load_n(&r->state, __ATOMIC_RELAXED) != ST_UP || r->ac == NULL) {
        *rc = SB_ERR_UNAVAILABLE;
        return NULL;
    }
    if (r->channel != NULL) {
        *rc = SB_ERR_INVALID;
        return NULL;
    }
    cmd_ctx *c = sb_malloc(sizeof(*c));
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->sent_us = sb_now_mono_us();
    return c;
}

static int command_sent(sb_redis *r, cmd_ctx *c, int hiredis_rc)
{
    if (hiredis_rc != REDIS_OK) {
        sb_free(c); /* hiredis did not register the callback */
        return SB_ERR_UNAVAILABLE;
    }
    if (r->pending++ == 0)
        r->progress_us = sb_now_mono_us();
    return SB_OK;
}

/* A cluster facade routes by argument: the formatted command (RESP) taken apart again. */
static int cluster_vcommand(sb_redis *r, sb_redis_reply_fn cb, void *arg, const char *fmt,
                            va_list ap)
{
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    if (len < 0 || cmd == NULL || cmd[0] != '*')
        return SB_ERR_INVALID;
    char *p = cmd + 1;
    int argc = (int)strtol(p, &p, 10);
    const char **argv = sb_calloc((size_t)argc + 1, sizeof(char *));
    size_t *lens = sb_calloc((size_t)argc + 1, sizeof(size_t));
    for (int i = 0; i < argc; i++) {
        p = strchr(p, '$') + 1; /* redisFormatCommand writes "\r\n$len\r\n<bytes>" */
        lens[i] = (size_t)strtoul(p, &p, 10);
        argv[i] = p + 2;
        p += 2 + lens[i];
    }
    int rc = sb_cluster_command_argv(r->cluster, cb, arg, argc, argv, lens);
    sb_free(argv);
    sb_free(lens);
    redisFreeCommand(cmd);
    return rc;
}

int sb_redis_command(sb_redis *r, sb_redis_reply_fn cb, void *arg, const char *fmt, ...)
{
    int rc;
    if (r != NULL && r->cluster != NULL) {
        if (r->channel != NULL)
            return SB_ERR_INVALID;
        va_list ap;
        va_start(ap, fmt);
        rc = cluster_vcommand(r, cb, arg, fmt, ap);
        va_end(ap);
        return rc;
    }
    cmd_ctx *c = command_begin(r, cb, arg, &rc);
    if (c == NULL)
        return rc;
    va_list ap;
    va_start(ap, fmt);
    rc = redisvAsyncCommand(r->ac, on_command_reply, c, fmt, ap);
    va_end(ap);
    return command_sent(r, c, rc);
}

int sb_redis_command_argv(sb_redis *r, sb_redis_reply_fn cb, void *arg, int argc, const char **argv,
                          const size_t *argvlen)
{
    if (r != NULL && r->cluster != NULL)
        return r->channel != NULL
                   ? SB_ERR_INVALID
                   : sb_cluster_command_argv(r->cluster, cb, arg, argc, argv, argvlen);
    return sb_redis_plain_argv(r, cb, arg, argc, argv, argvlen);
}

int sb_redis_plain_argv(sb_redis *r, sb_redis_reply_fn cb, void *arg, int argc, const char **argv,
                        const size_t *argvlen)
{
    int rc;
    cmd_ctx *c = command_begin(r, cb, arg, &rc);
    if (c == NULL)
        return rc;
    rc = redisAsyncCommandArgv(r->ac, on_command_reply, c, argc, argv, argvlen);
    return command_sent(r, c, rc);
}

struct event_base *sb_redis_base(const sb_redis *r)
{
    return r->base;
}

int sb_redis_is_up(const sb_redis *r)
{
    return r != NULL && __atomic_load_n(&r->state, __ATOMIC_RELAXED) == ST_UP;
}

unsigned long sb_redis_connects(const sb_redis *r)
{
    if (r != NULL && r->cluster != NULL)
        return sb_cluster_connects(r->cluster);
    return r ? r->connects : 0;
}

void sb_redis_free(sb_redis *r)
{
    if (r == NULL)
        return;
    r->freeing = 1;
    r->on_state = NULL; /* no state callbacks from a teardown the owner asked for */
    sb_cluster_free(r->cluster);
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    set_state(r, ST_IDLE);
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac); /* pending command callbacks run here, with NULL */
    }
    event_free(r->retry_ev);
    event_free(r->timeout_ev);
    event_free(r->abort_ev);
    event_free(r->watchdog_ev);
    sb_free(r->channel);
    url_clear(&r->url);
    sb_free(r);
}
