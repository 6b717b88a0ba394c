/*
 * redis_cluster.c — Redis Cluster routing for the sb_redis API (see redis_cluster.h).
 *
 * Pieces: the pure functions (CRC16, key slot, which argument routes a command, reading
 * MOVED/ASK/TRYAGAIN/CLUSTERDOWN) that the unit tests pin down; the node table (one
 * plain sb_redis per master, created when a slot map or a redirect names it and never
 * freed before the cluster, so no callback ever runs on a freed connection); the control
 * connection and its CLUSTER SLOTS refresh; and the command wrapper (ccmd) that keeps a
 * copy of the arguments so that a redirected command can be sent again.
 *
 * Failure policy: a command whose slot's master is not connected fails at once
 * (SB_ERR_UNAVAILABLE) — callers answer 503 for that workspace only. A redirect that
 * cannot be followed within SB_CLUSTER_TRIES sends ends with a NULL reply, exactly like
 * a lost connection, never with an error the caller would turn into a 500.
 *
 * Never: free a node connection before the cluster, resend a command that got any
 * answer but a redirect (a script may have run), or block the loop.
 */
#include "switchboard/redis_cluster.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"

#include "redis_int.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- pure functions ---- */

unsigned sb_cluster_crc16(const char *buf, size_t len)
{
    unsigned crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (unsigned)(unsigned char)buf[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000u) ? ((crc << 1) ^ 0x1021u) & 0xffffu : (crc << 1) & 0xffffu;
    }
    return crc;
}

unsigned sb_cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1)
            return sb_cluster_crc16(open + 1, (size_t)(close - open - 1)) & (SB_CLUSTER_SLOTS - 1);
    }
    return sb_cluster_crc16(key, len) & (SB_CLUSTER_SLOTS - 1);
}

int sb_cluster_key_index(int argc, const char **argv, const size_t *argvlen)
{
    if (argc < 2)
        return -1;
    const char *cmd = argv[0];
    if (strcasecmp(cmd, "EVAL") == 0 || strcasecmp(cmd, "EVALSHA") == 0 ||
        strcasecmp(cmd, "EVAL_RO") == 0 || strcasecmp(cmd, "EVALSHA_RO") == 0 ||
        strcasecmp(cmd, "FCALL") == 0) {
        if (argc < 4)
            return -1;
        char nk[16];
        size_t n = argvlen ? argvlen[2] : strlen(argv[2]);
        if (n == 0 || n >= sizeof(nk))
            return -1;
        memcpy(nk, argv[2], n);
        nk[n] = '\0';
        return strtol(nk, NULL, 10) > 0 ? 3 : -1;
    }
    static const char *const nokey[] = {
        "PING",  "INFO",   "PUBLISH", "CLUSTER",  "SCRIPT",    "TIME",       "ECHO",
        "AUTH",  "SELECT", "ASKING",  "ROLE",     "CONFIG",    "DBSIZE",     "FLUSHALL",
        "HELLO", "CLIENT", "COMMAND", "READONLY", "SUBSCRIBE", "PSUBSCRIBE", "LASTSAVE"};
    for (size_t i = 0; i < SB_ARRAY_LEN(nokey); i++)
        if (strcasecmp(cmd, nokey[i]) == 0)
            return -1;
    return 1;
}

sb_cluster_err sb_cluster_parse_error(const char *err, unsigned *slot, char *host, size_t hostlen,
                                      int *port)
{
    sb_cluster_err kind;
    const char *p;
    if (strncmp(err, "MOVED ", 6) == 0) {
        kind = SB_CLUSTER_ERR_MOVED;
        p = err + 6;
    } else if (strncmp(err, "ASK ", 4) == 0) {
        kind = SB_CLUSTER_ERR_ASK;
        p = err + 4;
    } else if (strncmp(err, "TRYAGAIN", 8) == 0) {
        return SB_CLUSTER_ERR_TRYAGAIN;
    } else if (strncmp(err, "CLUSTERDOWN", 11) == 0) {
        return SB_CLUSTER_ERR_DOWN;
    } else if (strstr(err, "non local key") != NULL) {
        return SB_CLUSTER_ERR_NONLOCAL;
    } else {
        return SB_CLUSTER_ERR_OTHER;
    }
    char *end;
    unsigned long s = strtoul(p, &end, 10);
    if (end == p || *end != ' ' || s >= SB_CLUSTER_SLOTS)
        return SB_CLUSTER_ERR_OTHER;
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= hostlen)
        return SB_CLUSTER_ERR_OTHER;
    long pt = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || pt < 1 || pt > 65535)
        return SB_CLUSTER_ERR_OTHER;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    *slot = (unsigned)s;
    *port = (int)pt;
    return kind;
}

/* ---- the cluster ---- */

typedef struct node {
    sb_cluster *c;
    sb_cluster_addr addr;
    sb_redis *conn; /* NULL for a subscriber cluster */
    int up;
} node;

typedef struct ccmd ccmd;

struct sb_cluster {
    sb_redis *facade;
    struct event_base *base;
    sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
    size_t nseeds;
    char *user, *password;
    node *nodes[SB_CLUSTER_MAX_NODES];
    size_t nnodes;
    short slots[SB_CLUSTER_SLOTS]; /* node index, -1 unknown */
    int have_map;
    int settled; /* every mapped master was up once, or the settle timer fired */
    struct event *settle_ev;
    sb_redis *control;
    sb_cluster_addr control_addr; /* the address the control connection last picked */
    unsigned pick_next, sub_next; /* rotation positions of the control and subscriber */
    int refreshing;
    struct event *tick_ev; /* periodic refresh */
    struct event *soon_ev; /* a refresh asked for by a redirect or a loss */
    sb_redis *sub;
    int sub_up;
    int connect_ms, command_ms;
    int up;
    int freeing;
    unsigned long connects;
    ccmd *delayed; /* commands waiting for a resend timer */
};

struct ccmd {
    sb_cluster *c;
    void (*cb)(redisReply *reply, void *arg);
    void *arg;
    int argc;
    char **argv;
    const char **view; /* the same strings, for the const APIs */
    size_t *lens;
    int tries;
    int target; /* node index to send to (ASK), or -1: by the map */
    int asking;
    const sb_redis_script *script; /* sent by SHA where loaded (redis.h, Scripts), or NULL */
    struct event *timer;
    ccmd *next, *prev;
};

/* 1 when every master the map names is connected. */
static int all_mapped_up(const sb_cluster *c)
{
    char used[SB_CLUSTER_MAX_NODES] = {0};
    for (size_t s = 0; s < SB_CLUSTER_SLOTS; s++)
        if (c->slots[s] >= 0)
            used[c->slots[s]] = 1;
    for (size_t i = 0; i < c->nnodes; i++)
        if (used[i] && !c->nodes[i]->up)
            return 0;
    return 1;
}

/* The facade is up once a map is loaded and, the first time, every master it names is
 * connected (or a connect timeout passed: a master down at start must not hold back the
 * others); after that while any master is connected. */
static void update_up(sb_cluster *c)
{
    if (c->have_map && !c->settled && c->sub == NULL && all_mapped_up(c))
        c->settled = 1;
    int up = c->have_map && (c->sub != NULL ? c->sub_up : 0);
    if (c->sub == NULL)
        for (size_t i = 0; i < c->nnodes && !up && c->settled; i++)
            up = c->have_map && c->nodes[i]->up;
    if (up != c->up) {
        c->up = up;
        sb_redis_facade_state(c->facade, up);
    }
}

static void refresh_soon(sb_cluster *c)
{
    if (c->freeing || evtimer_pending(c->soon_ev, NULL))
        return;
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(c->soon_ev, &tv);
}

static void on_node_state(sb_redis *r, int up, void *arg)
{
    node *n = arg;
    sb_cluster *c = n->c;
    n->up = up;
    if (up)
        c->connects++;
    else
        refresh_soon(c); /* the master may have failed over or left */
    update_up(c);
}

/* The node at |host|:|port|, created (and, for commands, connected) when new; -1 when the
 * table is full. */
static int node_index(sb_cluster *c, const char *host, int port)
{
    for (size_t i = 0; i < c->nnodes; i++)
        if (c->nodes[i]->addr.port == port && strcmp(c->nodes[i]->addr.host, host) == 0)
            return (int)i;
    if (c->nnodes >= SB_CLUSTER_MAX_NODES)
        return -1;
    node *n = sb_calloc(1, sizeof(*n));
    n->c = c;
    snprintf(n->addr.host, sizeof(n->addr.host), "%s", host);
    n->addr.port = port;
    c->nodes[c->nnodes] = n;
    if (c->sub == NULL) {
        n->conn = sb_redis_new_plain(c->base, host, port, c->user, c->password, NULL, NULL,
                                     on_node_state, n);
        sb_redis_set_timeouts(n->conn, c->connect_ms, c->command_ms);
    }
    return (int)c->nnodes++;
}

/* The |n|th address of the rotation over the seeds and the known masters. */
static const sb_cluster_addr *rotation(const sb_cluster *c, unsigned n)
{
    size_t i = n % (c->nseeds + c->nnodes);
    return i < c->nseeds ? &c->seeds[i] : &c->nodes[i - c->nseeds]->addr;
}

/* The control connection's next address; remembered, since CLUSTER SLOTS may name the
 * node it asked with an empty host. */
static int pick_control(void *arg, char *host, size_t hostlen, int *port)
{
    sb_cluster *c = arg;
    const sb_cluster_addr *a = rotation(c, c->pick_next++);
    snprintf(host, hostlen, "%s", a->host);
    *port = a->port;
    c->control_addr = *a;
    return 0;
}

/* The subscriber connection's next address (any node hears every PUBLISH). */
static int pick_sub(void *arg, char *host, size_t hostlen, int *port)
{
    sb_cluster *c = arg;
    const sb_cluster_addr *a = rotation(c, c->sub_next++);
    snprintf(host, hostlen, "%s", a->host);
    *port = a->port;
    return 0;
}

/* One CLUSTER SLOTS entry: {start, end, {host, port, ...}, replicas...}. */
static int read_range(sb_cluster *c, const redisReply *e, short *slots)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
        e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
        return SB_ERR;
    const redisReply *m = e->element[2];
    if (m->element[0]->type != REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_INTEGER)
        return SB_ERR;
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    if (lo < 0 || hi >= SB_CLUSTER_SLOTS || lo > hi)
        return SB_ERR;
    /* An empty or "?" host means "the node you asked". */
    const char *host = m->element[0]->str;
    if (host[0] == '\0' || strcmp(host, "?") == 0)
        host = c->control_addr.host;
    int idx = node_index(c, host, (int)m->element[1]->integer);
    if (idx < 0)
        return SB_ERR;
    for (long long s = lo; s <= hi; s++)
        slots[s] = (short)idx;
    return SB_OK;
}

static void on_slots(redisReply *rep, void *arg)
{
    sb_cluster *c = arg;
    c->refreshing = 0;
    if (c->freeing || rep == NULL)
        return;
    if (rep->type != REDIS_REPLY_ARRAY) {
        sb_log(SB_LOG_WARN, "redis_cluster_map", "CLUSTER SLOTS from %s:%d: %s",
               c->control_addr.host, c->control_addr.port,
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        return;
    }
    short *slots = sb_malloc(sizeof(c->slots));
    for (size_t s = 0; s < SB_CLUSTER_SLOTS; s++)
        slots[s] = -1;
    for (size_t i = 0; i < rep->elements; i++)
        if (read_range(c, rep->element[i], slots) != SB_OK) {
            sb_log(SB_LOG_WARN, "redis_cluster_map", "an unreadable CLUSTER SLOTS entry from %s:%d",
                   c->control_addr.host, c->control_addr.port);
            sb_free(slots);
            return;
        }
    if (!c->have_map)
        sb_log(SB_LOG_INFO, "redis_cluster_map",
               "Redis Cluster slot map loaded: %zu ranges, %zu masters", rep->elements, c->nnodes);
    memcpy(c->slots, slots, sizeof(c->slots));
    sb_free(slots);
    if (!c->have_map) {
        struct timeval tv = {c->connect_ms / 1000, (c->connect_ms % 1000) * 1000};
        evtimer_add(c->settle_ev, &tv);
    }
    c->have_map = 1;
    update_up(c);
}

static void refresh(sb_cluster *c)
{
    if (c->freeing || c->refreshing || !sb_redis_is_up(c->control))
        return;
    const char *argv[] = {"CLUSTER", "SLOTS"};
    if (sb_redis_plain_argv(c->control, on_slots, c, 2, argv, NULL) == SB_OK)
        c->refreshing = 1;
}

static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
    refresh(arg);
}

static void on_settle_timer(evutil_socket_t fd, short what, void *arg)
{
    sb_cluster *c = arg;
    c->settled = 1;
    update_up(c);
}

static void on_control_state(sb_redis *r, int up, void *arg)
{
    if (up)
        refresh(arg);
}

/* ---- the subscriber ---- */

static void on_sub_state(sb_redis *r, int up, void *arg)
{
    sb_cluster *c = arg;
    c->sub_up = up;
    update_up(c);
}

void sb_cluster_subscribe(sb_cluster *c, const char *channel,
                          void (*on_message)(const char *channel, const char *data, size_t len,
                                             void *arg),
                          void *arg)
{
    if (c->sub != NULL)
        return;
    /* The first attempt goes to a seed; every later one to the next seed or known node. */
    c->sub = sb_redis_new_plain(c->base, c->seeds[0].host, c->seeds[0].port, c->user, c->password,
                                pick_sub, c, on_sub_state, c);
    sb_redis_subscribe(c->sub, channel, on_message, arg);
    sb_redis_set_timeouts(c->sub, c->connect_ms, c->command_ms);
}

/* ---- commands ---- */

static void ccmd_free(ccmd *cc)
{
    for (int i = 0; i < cc->argc; i++)
        sb_free(cc->argv[i]);
    sb_free(cc->argv);
    sb_free(cc->view);
    sb_free(cc->lens);
    if (cc->timer != NULL)
        event_free(cc->timer);
    sb_free(cc);
}

static void deliver(ccmd *cc, redisReply *rep)
{
    if (cc->cb != NULL)
        cc->cb(rep, cc->arg);
    ccmd_free(cc);
}

static void on_ccmd_reply(redisReply *rep, void *arg);

/* Sends |cc| once; SB_ERR_UNAVAILABLE when its node is not connected. */
static int ccmd_send(ccmd *cc)
{
    sb_cluster *c = cc->c;
    int idx = cc->target;
    if (idx < 0) {
        int ki = sb_cluster_key_index(cc->argc, cc->view, cc->lens);
        if (ki >= 0 && c->have_map)
            idx = c->slots[sb_cluster_key_slot(cc->argv[ki], cc->lens[ki])];
        for (size_t i = 0; idx < 0 && i < c->nnodes; i++)
            if (c->nodes[i]->up)
                idx = (int)i; /* no key (or no map yet): any master; MOVED corrects it */
    }
    if (idx < 0 || !c->nodes[idx]->up)
        return SB_ERR_UNAVAILABLE;
    sb_redis *conn = c->nodes[idx]->conn;
    if (cc->asking) {
        const char *asking[] = {"ASKING"};
        if (sb_redis_plain_argv(conn, NULL, NULL, 1, asking, NULL) != SB_OK)
            return SB_ERR_UNAVAILABLE;
    }
    if ((cc->script != NULL
             ? sb_redis_plain_script(conn, cc->script, on_ccmd_reply, cc, cc->argc, cc->view,
                                     cc->lens)
             : sb_redis_plain_argv(conn, on_ccmd_reply, cc, cc->argc, cc->view, cc->lens)) != SB_OK)
        return SB_ERR_UNAVAILABLE;
    cc->asking = 0;
    return SB_OK;
}

static void delayed_remove(ccmd *cc)
{
    if (cc->prev != NULL)
        cc->prev->next = cc->next;
    else
        cc->c->delayed = cc->next;
    if (cc->next != NULL)
        cc->next->prev = cc->prev;
    cc->next = cc->prev = NULL;
}

static void resend(ccmd *cc, int delay_ms);

static void on_resend_timer(evutil_socket_t fd, short what, void *arg)
{
    ccmd *cc = arg;
    delayed_remove(cc);
    if (ccmd_send(cc) != SB_OK)
        resend(cc, 0);
}

/* Sends |cc| again after |delay_ms| (0: now if its node is up, else after a short
 * wait), or ends it with NULL after SB_CLUSTER_TRIES. */
static void resend(ccmd *cc, int delay_ms)
{
    sb_cluster *c = cc->c;
    if (c->freeing || ++cc->tries >= SB_CLUSTER_TRIES) {
        deliver(cc, NULL);
        return;
    }
    if (delay_ms == 0 && ccmd_send(cc) == SB_OK)
        return;
    if (delay_ms == 0)
        delay_ms = 50 << (cc->tries < 4 ? cc->tries : 4);
    if (cc->timer == NULL)
        cc->timer = evtimer_new(c->base, on_resend_timer, cc);
    cc->next = c->delayed;
    cc->prev = NULL;
    if (c->delayed != NULL)
        c->delayed->prev = cc;
    c->delayed = cc;
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(cc->timer, &tv);
}

static void on_ccmd_reply(redisReply *rep, void *arg)
{
    ccmd *cc = arg;
    sb_cluster *c = cc->c;
    if (rep == NULL || c->freeing || rep->type != REDIS_REPLY_ERROR) {
        deliver(cc, rep);
        return;
    }
    unsigned slot = 0;
    char host[256];
    int port = 0, idx;
    switch (sb_cluster_parse_error(rep->str, &slot, host, sizeof(host), &port)) {
    case SB_CLUSTER_ERR_MOVED:
        idx = node_index(c, host, port);
        if (idx < 0) {
            deliver(cc, NULL);
            return;
        }
        c->slots[slot] = (short)idx;
        cc->target = -1;
        refresh_soon(c);
        resend(cc, 0);
        return;
    case SB_CLUSTER_ERR_ASK:
        idx = node_index(c, host, port);
        if (idx < 0) {
            deliver(cc, NULL);
            return;
        }
        cc->target = idx;
        cc->asking = 1;
        resend(cc, 0);
        return;
    case SB_CLUSTER_ERR_TRYAGAIN:
        cc->target = -1;
        resend(cc, 50 << (cc->tries < 4 ? cc->tries : 4));
        return;
    case SB_CLUSTER_ERR_DOWN:
    case SB_CLUSTER_ERR_NONLOCAL:
        refresh_soon(c);
        sb_log(SB_LOG_WARN, "redis_cluster_down", "%.200s", rep->str);
        deliver(cc, NULL);
        return;
    case SB_CLUSTER_ERR_OTHER:
        break;
    }
    deliver(cc, rep);
}

int sb_cluster_command_argv(sb_cluster *c, void (*cb)(redisReply *reply, void *arg), void *arg,
                            int argc, const char **argv, const size_t *argvlen)
{
    return sb_cluster_script_argv(c, NULL, cb, arg, argc, argv, argvlen);
}

int sb_cluster_script_argv(sb_cluster *c, const sb_redis_script *s,
                           void (*cb)(redisReply *reply, void *arg), void *arg, int argc,
                           const char **argv, const size_t *argvlen)
{
    if (c->sub != NULL)
        return SB_ERR_INVALID;
    if (!c->have_map || argc < 1)
        return SB_ERR_UNAVAILABLE;
    ccmd *cc = sb_calloc(1, sizeof(*cc));
    cc->c = c;
    cc->cb = cb;
    cc->arg = arg;
    cc->target = -1;
    cc->script = s;
    cc->argc = argc;
    cc->argv = sb_calloc((size_t)argc, sizeof(char *));
    cc->lens = sb_calloc((size_t)argc, sizeof(size_t));
    cc->view = sb_calloc((size_t)argc, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        cc->lens[i] = argvlen ? argvlen[i] : strlen(argv[i]);
        cc->argv[i] = sb_malloc(cc->lens[i] + 1);
        memcpy(cc->argv[i], argv[i], cc->lens[i]);
        cc->argv[i][cc->lens[i]] = '\0';
        cc->view[i] = cc->argv[i];
    }
    if (ccmd_send(cc) != SB_OK) {
        ccmd_free(cc);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

/* ---- life cycle ---- */

sb_cluster *sb_cluster_new(sb_redis *facade, struct event_base *base, const sb_cluster_addr *seeds,
                           size_t n, const char *user, const char *password)
{
    sb_cluster *c = sb_calloc(1, sizeof(*c));
    c->facade = facade;
    c->base = base;
    if (n > SB_CLUSTER_MAX_SEEDS)
        n = SB_CLUSTER_MAX_SEEDS;
    memcpy(c->seeds, seeds, n * sizeof(*seeds));
    c->nseeds = n;
    c->user = user ? sb_strdup(user) : NULL;
    c->password = password ? sb_strdup(password) : NULL;
    for (size_t s = 0; s < SB_CLUSTER_SLOTS; s++)
        c->slots[s] = -1;
    c->connect_ms = SB_REDIS_CONNECT_TIMEOUT_MS;
    c->command_ms = SB_REDIS_COMMAND_TIMEOUT_MS;
    c->tick_ev = event_new(base, -1, EV_PERSIST, on_refresh_timer, c);
    c->soon_ev = evtimer_new(base, on_refresh_timer, c);
    c->settle_ev = evtimer_new(base, on_settle_timer, c);
    struct timeval tv = {SB_CLUSTER_REFRESH_MS / 1000, (SB_CLUSTER_REFRESH_MS % 1000) * 1000};
    evtimer_add(c->tick_ev, &tv);
    c->control = sb_redis_new_plain(base, seeds[0].host, seeds[0].port, user, password,
                                    pick_control, c, on_control_state, c);
    return c;
}

void sb_cluster_set_timeouts(sb_cluster *c, int connect_ms, int command_ms)
{
    if (connect_ms > 0)
        c->connect_ms = connect_ms;
    if (command_ms > 0)
        c->command_ms = command_ms;
    sb_redis_set_timeouts(c->control, connect_ms, command_ms);
    if (c->sub != NULL)
        sb_redis_set_timeouts(c->sub, connect_ms, command_ms);
    for (size_t i = 0; i < c->nnodes; i++)
        if (c->nodes[i]->conn != NULL)
            sb_redis_set_timeouts(c->nodes[i]->conn, connect_ms, command_ms);
}

unsigned long sb_cluster_connects(const sb_cluster *c)
{
    return c ? c->connects + (c->sub ? sb_redis_connects(c->sub) : 0) : 0;
}

void sb_cluster_free(sb_cluster *c)
{
    if (c == NULL)
        return;
    c->freeing = 1;
    while (c->delayed != NULL) {
        ccmd *cc = c->delayed;
        delayed_remove(cc);
        deliver(cc, NULL);
    }
    sb_redis_free(c->control);
    sb_redis_free(c->sub);
    for (size_t i = 0; i < c->nnodes; i++) {
        sb_redis_free(c->nodes[i]->conn); /* pending commands end with NULL here */
        sb_free(c->nodes[i]);
    }
    event_free(c->tick_ev);
    event_free(c->soon_ev);
    event_free(c->settle_ev);
    sb_free(c->user);
    if (c->password != NULL) {
        memset(c->password, 0, strlen(c->password));
        sb_free(c->password);
    }
    sb_free(c);
}
