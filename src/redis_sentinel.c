/*
 * redis_sentinel.c — Sentinel discovery and the watcher thread (see redis_sentinel.h).
 *
 * State: one process-wide configuration (the parsed URL) and the current master
 * (address, generation, whether known), behind one mutex; a condition variable wakes the
 * watcher for a suspicion or a stop. The watcher works on a private copy of the
 * configuration, so a reader never waits for a network call.
 *
 * A master is published only after ROLE on it answered "master": during a failover a
 * sentinel may still name the old master, and the demoted server answers ROLE "slave".
 * Between the promotion and the moment the sentinels switch, the old master may still
 * take writes that the failover will discard — Redis's asynchronous replication; see
 * docs/operations.md ("Sentinel") for min-replicas-to-write.
 *
 * Never: log a password, block a caller on the network (only sb_sentinel_discover,
 * the start-up check, does), or publish an address ROLE did not confirm.
 */
#include "switchboard/redis_sentinel.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/util.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SENTINELS 16
#define HOST_MAX 256
#define WATCH_TIMEOUT_MS 1000 /* each connect/command of the watcher */
#define RECHECK_MS 5000       /* re-ask even without a +switch-master */
#define RETRY_MS 250          /* after no sentinel could name a master */

typedef struct sent_cfg {
    size_t n;
    char host[MAX_SENTINELS][HOST_MAX];
    int port[MAX_SENTINELS];
    char name[128];
    char *m_user, *m_password; /* the master's credentials */
    char *s_user, *s_password; /* the sentinels' (explicit) credentials */
    int s_explicit;            /* sentinel_user / sentinel_password given */
    char *url;                 /* to recognise the same URL parsed again */
} sent_cfg;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    sent_cfg *cfg;
    char host[HOST_MAX];
    int port;
    int known;
    unsigned long gen;
    int running, stop, suspect;
    size_t first; /* the sentinel that answered last: asked first next time */
    pthread_t thread;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void wipe_free(char *s)
{
    if (s != NULL) {
        memset(s, 0, strlen(s));
        sb_free(s);
    }
}

static void cfg_free(sent_cfg *c)
{
    if (c == NULL)
        return;
    wipe_free(c->m_user);
    wipe_free(c->m_password);
    wipe_free(c->s_user);
    wipe_free(c->s_password);
    wipe_free(c->url);
    sb_free(c);
}

static char *dup_or_null(const char *s)
{
    return s ? sb_strdup(s) : NULL;
}

static sent_cfg *cfg_copy(const sent_cfg *c)
{
    sent_cfg *d = sb_malloc(sizeof(*d));
    *d = *c;
    d->m_user = dup_or_null(c->m_user);
    d->m_password = dup_or_null(c->m_password);
    d->s_user = dup_or_null(c->s_user);
    d->s_password = dup_or_null(c->s_password);
    d->url = dup_or_null(c->url);
    return d;
}

/* ---- URL ---- */

int sb_sentinel_url_is(const char *url)
{
    return url != NULL && strncmp(url, SB_SENTINEL_SCHEME, strlen(SB_SENTINEL_SCHEME)) == 0;
}

/* Replaces *|dst| with the decoded |n| bytes at |s|; "" becomes NULL. */
static int set_decoded(char **dst, const char *s, size_t n)
{
    char *v = sb_pct_decode(s, n);
    if (v == NULL)
        return SB_ERR_INVALID;
    wipe_free(*dst);
    *dst = v[0] != '\0' ? v : NULL;
    if (*dst == NULL)
        sb_free(v);
    return SB_OK;
}

static int parse_hostport(const char *s, size_t n, sent_cfg *c, char *err, size_t errlen)
{
    if (c->n == MAX_SENTINELS) {
        snprintf(err, errlen, "at most %d sentinels in a redis+sentinel URL", MAX_SENTINELS);
        return SB_ERR_INVALID;
    }
    const char *hs = s, *portp = NULL;
    size_t hlen = n;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (close == NULL || (close + 1 < s + n && close[1] != ':')) {
            snprintf(err, errlen, "bad [IPv6] sentinel address");
            return SB_ERR_INVALID;
        }
        hs = s + 1;
        hlen = (size_t)(close - s - 1);
        if (close + 1 < s + n)
            portp = close + 2;
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon != NULL) {
            hlen = (size_t)(colon - s);
            portp = colon + 1;
        }
    }
    if (hlen == 0 || hlen >= HOST_MAX) {
        snprintf(err, errlen, "every sentinel needs a host (host:port, comma-separated)");
        return SB_ERR_INVALID;
    }
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)hs[i];
        if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || ch == ':' || ch == '%')) {
            snprintf(err, errlen, "a sentinel host has an invalid character");
            return SB_ERR_INVALID;
        }
    }
    memcpy(c->host[c->n], hs, hlen);
    c->host[c->n][hlen] = '\0';
    c->port[c->n] = SB_SENTINEL_DEFAULT_PORT;
    if (portp != NULL) {
        char buf[8];
        size_t plen = (size_t)(s + n - portp);
        long v;
        if (plen == 0 || plen >= sizeof(buf)) {
            snprintf(err, errlen, "a sentinel port must be a number from 1 to 65535");
            return SB_ERR_INVALID;
        }
        memcpy(buf, portp, plen);
        buf[plen] = '\0';
        if (sb_parse_long(buf, 1, 65535, &v) != SB_OK) {
            snprintf(err, errlen, "a sentinel port must be a number from 1 to 65535");
            return SB_ERR_INVALID;
        }
        c->port[c->n] = (int)v;
    }
    c->n++;
    return SB_OK;
}

static int parse_query(const char *q, sent_cfg *c, int *db, char *err, size_t errlen)
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
        char **dst = NULL;
        if (nlen == 2 && strncmp(q, "db", 2) == 0) {
            char buf[16];
            long d;
            if (vlen == 0 || vlen >= sizeof(buf)) {
                snprintf(err, errlen, "db must be a number from 0");
                return SB_ERR_INVALID;
            }
            memcpy(buf, v, vlen);
            buf[vlen] = '\0';
            if (sb_parse_long(buf, 0, 1000000, &d) != SB_OK) {
                snprintf(err, errlen, "db must be a number from 0");
                return SB_ERR_INVALID;
            }
            *db = (int)d;
        } else if (nlen == 4 && strncmp(q, "user", 4) == 0) {
            dst = &c->m_user;
        } else if (nlen == 8 && strncmp(q, "password", 8) == 0) {
            dst = &c->m_password;
        } else if (nlen == 13 && strncmp(q, "sentinel_user", 13) == 0) {
            dst = &c->s_user;
            c->s_explicit = 1;
        } else if (nlen == 17 && strncmp(q, "sentinel_password", 17) == 0) {
            dst = &c->s_password;
            c->s_explicit = 1;
        } else {
            snprintf(err, errlen,
                     "unknown query parameter (known: db, user, password, "
                     "sentinel_user, sentinel_password)");
            return SB_ERR_INVALID;
        }
        if (dst != NULL && set_decoded(dst, v, vlen) != SB_OK) {
            snprintf(err, errlen, "bad %%-escape in a query parameter");
            return SB_ERR_INVALID;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return SB_OK;
}

static int parse(const char *url, sent_cfg *c, int *db, char *err, size_t errlen)
{
    const char *a = url + strlen(SB_SENTINEL_SCHEME);
    size_t alen = strcspn(a, "/?");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (a[i] == '@')
            at = a + i;
    const char *hosts = a;
    if (at != NULL) {
        const char *colon = memchr(a, ':', (size_t)(at - a));
        int bad = 0;
        if (colon != NULL) {
            if (colon > a)
                bad |= set_decoded(&c->m_user, a, (size_t)(colon - a)) != SB_OK;
            bad |= set_decoded(&c->m_password, colon + 1, (size_t)(at - colon - 1)) != SB_OK;
        } else {
            bad |= set_decoded(&c->m_password, a, (size_t)(at - a)) != SB_OK;
        }
        if (bad) {
            snprintf(err, errlen, "bad %%-escape in the credentials of the Redis URL");
            return SB_ERR_INVALID;
        }
        hosts = at + 1;
    }
    const char *end = a + alen;
    for (int more = hosts < end; more;) { /* every comma-separated segment, empty ones too */
        const char *comma = memchr(hosts, ',', (size_t)(end - hosts));
        size_t n = comma ? (size_t)(comma - hosts) : (size_t)(end - hosts);
        if (parse_hostport(hosts, n, c, err, errlen) != SB_OK)
            return SB_ERR_INVALID;
        hosts += n + 1;
        more = comma != NULL;
    }
    if (c->n == 0) {
        snprintf(err, errlen, "redis+sentinel URLs need at least one sentinel host:port");
        return SB_ERR_INVALID;
    }
    if (*end != '/') {
        snprintf(err, errlen, "redis+sentinel URLs end with /master-name");
        return SB_ERR_INVALID;
    }
    size_t nlen = strcspn(end + 1, "?");
    if (nlen == 0 || nlen >= sizeof(c->name)) {
        snprintf(err, errlen, "redis+sentinel URLs end with /master-name");
        return SB_ERR_INVALID;
    }
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)end[1 + i];
        if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_')) {
            snprintf(err, errlen, "the master name may hold letters, digits, '.', '-', '_'");
            return SB_ERR_INVALID;
        }
    }
    memcpy(c->name, end + 1, nlen);
    c->name[nlen] = '\0';
    const char *q = end + 1 + nlen;
    if (*q == '?' && parse_query(q + 1, c, db, err, errlen) != SB_OK)
        return SB_ERR_INVALID;
    return SB_OK;
}

static void stop_watcher_locked(void);

int sb_sentinel_url_parse(const char *url, sb_sentinel_creds *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!sb_sentinel_url_is(url)) {
        snprintf(err, errlen, "not a redis+sentinel URL");
        return SB_ERR_INVALID;
    }
    sent_cfg *c = sb_calloc(1, sizeof(*c));
    int db = 0;
    if (parse(url, c, &db, err, errlen) != SB_OK) {
        cfg_free(c);
        return SB_ERR_INVALID;
    }
    out->user = dup_or_null(c->m_user);
    out->password = dup_or_null(c->m_password);
    out->db = db;
    snprintf(out->name, sizeof(out->name), "%s", c->name);
    c->url = sb_strdup(url);
    pthread_mutex_lock(&g.lock);
    if (g.cfg != NULL && strcmp(g.cfg->url, url) == 0) {
        cfg_free(c); /* the same URL again (every connection parses it) */
    } else {
        stop_watcher_locked();
        cfg_free(g.cfg);
        g.cfg = c;
        g.known = 0;
        g.first = 0;
    }
    pthread_mutex_unlock(&g.lock);
    return SB_OK;
}

void sb_sentinel_creds_clear(sb_sentinel_creds *c)
{
    wipe_free(c->user);
    wipe_free(c->password);
    memset(c, 0, sizeof(*c));
}

/* ---- talking to sentinels and servers (blocking, bounded) ---- */

static redisReply *call(redisContext *c, int argc, const char **argv)
{
    return redisCommandArgv(c, argc, argv, NULL);
}

/* AUTH with |user|/|password| when a password is set. SB_OK, or SB_ERR with |err|;
 * |lenient|: a server without any password that refuses the AUTH is fine. */
static int auth(redisContext *c, const char *user, const char *password, int lenient, char *err,
                size_t errlen)
{
    if (password == NULL)
        return SB_OK;
    const char *argv[3] = {"AUTH", user ? user : password, password};
    redisReply *r = call(c, user ? 3 : 2, argv);
    int rc = SB_OK;
    if (r == NULL) {
        snprintf(err, errlen, "AUTH failed: %s", c->errstr[0] ? c->errstr : "no answer");
        rc = SB_ERR;
    } else if (r->type == REDIS_REPLY_ERROR) {
        if (!(lenient && (strstr(r->str, "without any password") != NULL ||
                          strstr(r->str, "no password is set") != NULL))) {
            snprintf(err, errlen, "AUTH refused: %.120s", r->str);
            rc = SB_ERR;
        }
    }
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}

static redisContext *connect_to(const char *host, int port, int timeout_ms, char *err,
                                size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (c == NULL || c->err) {
        snprintf(err, errlen, "%.100s:%d: %.100s", host, port, c ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

static redisContext *connect_sentinel(const sent_cfg *cfg, size_t i, int timeout_ms, char *err,
                                      size_t errlen)
{
    redisContext *c = connect_to(cfg->host[i], cfg->port[i], timeout_ms, err, errlen);
    if (c == NULL)
        return NULL;
    int rc = cfg->s_explicit ? auth(c, cfg->s_user, cfg->s_password, 0, err, errlen)
                             : auth(c, cfg->m_user, cfg->m_password, 1, err, errlen);
    if (rc != SB_OK) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* ROLE on host:port answers "master". */
static int confirm_master(const sent_cfg *cfg, const char *host, int port, int timeout_ms,
                          char *err, size_t errlen)
{
    redisContext *c = connect_to(host, port, timeout_ms, err, errlen);
    if (c == NULL)
        return SB_ERR_UNAVAILABLE;
    int rc = auth(c, cfg->m_user, cfg->m_password, 0, err, errlen);
    if (rc == SB_OK) {
        const char *argv[1] = {"ROLE"};
        redisReply *r = call(c, 1, argv);
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
            r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0)
            rc = SB_OK;
        else {
            snprintf(err, errlen, "%.100s:%d answers ROLE %.20s, not master", host, port,
                     r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                             r->element[0]->type == REDIS_REPLY_STRING
                         ? r->element[0]->str
                         : "with an error");
            rc = SB_ERR_UNAVAILABLE;
        }
        if (r != NULL)
            freeReplyObject(r);
    }
    redisFree(c);
    return rc == SB_OK ? SB_OK : SB_ERR_UNAVAILABLE;
}

/* Asks the sentinels in turn, from |*first|; SB_OK with a confirmed master (and |*first|
 * the sentinel that named it). */
static int discover(const sent_cfg *cfg, size_t *first, int timeout_ms, char *host, size_t hostlen,
                    int *port, char *err, size_t errlen)
{
    char why[256] = "no sentinel configured";
    for (size_t k = 0; k < cfg->n; k++) {
        size_t i = (*first + k) % cfg->n;
        if (__atomic_load_n(&g.stop, __ATOMIC_RELAXED))
            break; /* stopping: do not wait out the other sentinels' timeouts */
        redisContext *c = connect_sentinel(cfg, i, timeout_ms, why, sizeof(why));
        if (c == NULL)
            continue;
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", cfg->name};
        redisReply *r = call(c, 3, argv);
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len < hostlen) {
            char h[HOST_MAX];
            long p;
            snprintf(h, sizeof(h), "%s", r->element[0]->str);
            if (sb_parse_long(r->element[1]->str, 1, 65535, &p) == SB_OK &&
                confirm_master(cfg, h, (int)p, timeout_ms, why, sizeof(why)) == SB_OK) {
                snprintf(host, hostlen, "%s", h);
                *port = (int)p;
                *first = i;
                freeReplyObject(r);
                redisFree(c);
                return SB_OK;
            }
        } else {
            snprintf(why, sizeof(why), "sentinel %.60s:%d does not know master %.60s%s%.80s",
                     cfg->host[i], cfg->port[i], cfg->name,
                     r && r->type == REDIS_REPLY_ERROR ? ": " : "",
                     r && r->type == REDIS_REPLY_ERROR ? r->str : "");
        }
        if (r != NULL)
            freeReplyObject(r);
        redisFree(c);
    }
    snprintf(err, errlen, "no sentinel named a reachable master %s (last: %s)", cfg->name, why);
    return SB_ERR_UNAVAILABLE;
}

int sb_sentinel_discover(int timeout_ms, char *host, size_t hostlen, int *port, char *err,
                         size_t errlen)
{
    pthread_mutex_lock(&g.lock);
    sent_cfg *cfg = g.cfg ? cfg_copy(g.cfg) : NULL;
    size_t first = g.first;
    pthread_mutex_unlock(&g.lock);
    if (cfg == NULL) {
        snprintf(err, errlen, "no redis+sentinel URL configured");
        return SB_ERR_UNAVAILABLE;
    }
    int rc = discover(cfg, &first, timeout_ms, host, hostlen, port, err, errlen);
    cfg_free(cfg);
    return rc;
}

/* ---- the watcher ---- */

static void publish(const sent_cfg *cfg, const char *host, int port, size_t first)
{
    pthread_mutex_lock(&g.lock);
    int changed = !g.known || g.port != port || strcmp(g.host, host) != 0;
    if (changed) {
        snprintf(g.host, sizeof(g.host), "%s", host);
        g.port = port;
        g.known = 1;
        __atomic_store_n(&g.gen, g.gen + 1, __ATOMIC_RELEASE); /* read without the lock */
    }
    g.first = first;
    pthread_mutex_unlock(&g.lock);
    if (changed)
        sb_log(SB_LOG_WARN, "sentinel_master",
               "Sentinel: master %s is %s:%d (confirmed by ROLE); connections follow it", cfg->name,
               host, port);
}

static int should_stop_or_suspect(void)
{
    pthread_mutex_lock(&g.lock);
    int v = g.stop || g.suspect;
    pthread_mutex_unlock(&g.lock);
    return v;
}

/* Waits up to |ms| for a stop or a suspicion. */
static void nap(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&g.lock);
    while (!g.stop && !g.suspect)
        if (pthread_cond_timedwait(&g.wake, &g.lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g.lock);
}

/* A connection to the first sentinel (from |first|, in turn) that accepts SUBSCRIBE
 * +switch-master, or NULL. Subscribing before asking for the master means no switch can
 * fall between the answer and the subscription. */
static redisContext *subscribe_switches(const sent_cfg *cfg, size_t first)
{
    char err[256];
    for (size_t k = 0; k < cfg->n; k++) {
        size_t i = (first + k) % cfg->n;
        redisContext *c = connect_sentinel(cfg, i, WATCH_TIMEOUT_MS, err, sizeof(err));
        if (c == NULL)
            continue;
        const char *argv[2] = {"SUBSCRIBE", "+switch-master"};
        redisReply *r = call(c, 2, argv);
        int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;
        if (r != NULL)
            freeReplyObject(r);
        if (ok)
            return c;
        redisFree(c);
    }
    return NULL;
}

/* Waits on the subscribed |c| until the master of |cfg| switched (SB_OK, the new address
 * announced in |host|/|port|), RECHECK_MS passed, a suspicion or stop came, or the
 * sentinel was lost (SB_ERR_UNAVAILABLE for all of those). */
static int watch(redisContext *c, const sent_cfg *cfg, char *host, size_t hostlen, int *port)
{
    uint64_t until = sb_now_mono_us() + (uint64_t)RECHECK_MS * 1000u;
    size_t nlen = strlen(cfg->name);
    int rc = SB_ERR_UNAVAILABLE;
    while (rc != SB_OK && sb_now_mono_us() < until && !should_stop_or_suspect()) {
        void *reply = NULL;
        /* Messages that arrived with the SUBSCRIBE answer are already buffered. */
        while (rc != SB_OK && redisGetReplyFromReader(c, &reply) == REDIS_OK && reply != NULL) {
            redisReply *m = reply;
            /* "+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>" */
            if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
                m->element[2]->type == REDIS_REPLY_STRING &&
                strncmp(m->element[2]->str, cfg->name, nlen) == 0 &&
                m->element[2]->str[nlen] == ' ') {
                char oldh[HOST_MAX], newh[HOST_MAX];
                int oldp, newp;
                sb_log(SB_LOG_WARN, "sentinel_switch", "Sentinel announced +switch-master %s",
                       m->element[2]->str);
                if (sscanf(m->element[2]->str + nlen + 1, "%255s %d %255s %d", oldh, &oldp, newh,
                           &newp) == 4 &&
                    strlen(newh) < hostlen) {
                    snprintf(host, hostlen, "%s", newh);
                    *port = newp;
                    rc = SB_OK;
                } else {
                    rc = SB_ERR; /* unreadable: ask the sentinels */
                }
            }
            freeReplyObject(m);
            reply = NULL;
        }
        if (rc == SB_ERR)
            return SB_ERR_UNAVAILABLE;
        if (rc == SB_OK || c->err)
            break;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int n = poll(&pfd, 1, 100);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && redisBufferRead(c) != REDIS_OK)
            break;
    }
    return rc;
}

static void *watcher_main(void *arg)
{
    int failing = 0;
    char announced[HOST_MAX] = "";
    int announced_port = 0;
    for (;;) {
        pthread_mutex_lock(&g.lock);
        if (g.stop) {
            pthread_mutex_unlock(&g.lock);
            break;
        }
        g.suspect = 0;
        sent_cfg *cfg = cfg_copy(g.cfg);
        size_t first = g.first;
        pthread_mutex_unlock(&g.lock);
        char host[HOST_MAX], err[512];
        int port;
        redisContext *sub = subscribe_switches(cfg, first);
        int rc = SB_ERR_UNAVAILABLE;
        if (announced[0] != '\0' && confirm_master(cfg, announced, announced_port, WATCH_TIMEOUT_MS,
                                                   err, sizeof(err)) == SB_OK) {
            /* The address the switch announced, confirmed: other sentinels may not have
             * heard of the switch yet and would still name the old master. */
            snprintf(host, sizeof(host), "%s", announced);
            port = announced_port;
            rc = SB_OK;
        }
        announced[0] = '\0';
        if (rc != SB_OK)
            rc = discover(cfg, &first, WATCH_TIMEOUT_MS, host, sizeof(host), &port, err,
                          sizeof(err));
        if (rc == SB_OK) {
            if (failing)
                sb_log(SB_LOG_INFO, "sentinel_ok", "Sentinel names a master %s again", cfg->name);
            failing = 0;
            publish(cfg, host, port, first);
            if (sub != NULL &&
                watch(sub, cfg, announced, sizeof(announced), &announced_port) != SB_OK)
                announced[0] = '\0';
            if (sub == NULL)
                nap(RECHECK_MS / 5); /* no sentinel lets us subscribe: poll instead */
        } else {
            if (!failing)
                sb_log(SB_LOG_WARN, "sentinel_no_master", "%s; retrying", err);
            failing = 1;
            nap(RETRY_MS);
        }
        if (sub != NULL)
            redisFree(sub);
        cfg_free(cfg);
    }
    return NULL;
}

/* Caller holds g.lock. */
static void start_watcher_locked(void)
{
    if (g.running || g.cfg == NULL)
        return;
    g.stop = 0;
    if (pthread_create(&g.thread, NULL, watcher_main, NULL) == 0)
        g.running = 1;
}

/* Caller holds g.lock; releases it while joining. */
static void stop_watcher_locked(void)
{
    if (!g.running)
        return;
    g.stop = 1;
    pthread_cond_broadcast(&g.wake);
    pthread_t t = g.thread;
    g.running = 0;
    pthread_mutex_unlock(&g.lock);
    pthread_join(t, NULL);
    pthread_mutex_lock(&g.lock);
}

int sb_sentinel_master_addr(char *host, size_t hostlen, int *port, unsigned long *gen)
{
    pthread_mutex_lock(&g.lock);
    start_watcher_locked();
    int rc = SB_ERR_UNAVAILABLE;
    if (g.known && strlen(g.host) < hostlen) {
        snprintf(host, hostlen, "%s", g.host);
        *port = g.port;
        *gen = g.gen;
        rc = SB_OK;
    }
    pthread_mutex_unlock(&g.lock);
    return rc;
}

unsigned long sb_sentinel_generation(void)
{
    return __atomic_load_n(&g.gen, __ATOMIC_ACQUIRE);
}

void sb_sentinel_suspect(const char *why)
{
    pthread_mutex_lock(&g.lock);
    if (!g.suspect)
        sb_log(SB_LOG_WARN, "sentinel_suspect", "%s: asking the sentinels for the master now", why);
    g.suspect = 1;
    pthread_cond_broadcast(&g.wake);
    pthread_mutex_unlock(&g.lock);
}

void sb_sentinel_stop(void)
{
    pthread_mutex_lock(&g.lock);
    stop_watcher_locked();
    cfg_free(g.cfg);
    g.cfg = NULL;
    g.known = 0;
    pthread_mutex_unlock(&g.lock);
}
