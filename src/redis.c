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
 * A cluster facade (a redis+cluster:// URL) has no connection of its own: its commands go
 * to redis_cluster.c, which runs plain connections of this file to the nodes
 * (sb_redis_new_plain, redis_int.h) and sets the facade's state. URL parsing and the
 * blocking start-up calls are in redis_url.c.
 *
 * Scripts (redis.h): each connection keeps a bit per script (redis_script.c ids) that
 * says "sent as EVAL here", cleared with every new connection (a new server session,
 * after a restart or a failover, has none of ours). A script is sent as EVAL while its
 * bit is clear — the bit is set as it goes out — and as EVALSHA after. Ordering: Redis
 * runs one connection's commands in the order they arrive, so every EVALSHA sent after
 * the EVAL runs after it, when the server has the script; nothing waits for a reply. An
 * EVALSHA answered NOSCRIPT (the cache was flushed under a live connection) did nothing,
 * and every EVALSHA behind it on the wire did nothing either (the flush emptied the
 * whole cache), so resending each, as EVAL, from its reply keeps them in their order.
 * What could overtake them is a script sent while those replies are still coming: so
 * from the first NOSCRIPT until every command sent before it has had its reply (a
 * "replay"), new script commands are held, in order, and sent right after the last
 * resend. Hence script commands of one connection run in the order they were sent —
 * the queue's appends, leases and acks of a workspace included. Two things can still run
 * ahead of a resend: a plain (non-script) command, and a script's first use on that
 * connection (an EVAL) that was already on the wire; neither is how a caller orders
 * writes (a caller that needs one command after another waits for the first's reply).
 * An EVALSHA keeps its formatted arguments until its reply, for the resend: the same bytes
 * hiredis would have formatted, held a little longer.
 *
 * Never: queue commands while down, log a password, or block the loop (except the
 * getaddrinfo inside hiredis' connect, documented in redis.h).
 */
#include "switchboard/redis.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/redis_sentinel.h"
#include "switchboard/redis_cluster.h"
#include "switchboard/util.h"

#include "redis_int.h"

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

/* ---- the async connection ---- */

typedef enum { ST_IDLE = 0, ST_CONNECTING, ST_HANDSHAKE, ST_UP } conn_state;

/* Handshake steps, in order; steps that do not apply are skipped. */
typedef enum { HS_AUTH = 0, HS_SELECT, HS_ROLE, HS_FINAL, HS_DONE } hs_step;

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
    char down_where[300];   /* the address that outage was logged for */
    unsigned attempt;       /* counts connection attempts */
    unsigned abort_attempt; /* the attempt |abort_ev| was activated for */
    int freeing;
    char error[160];       /* why the last attempt failed (no secrets) */
    sb_cluster *cluster;   /* a Redis Cluster facade: every command goes through it */
    sb_redis_pick_fn pick; /* chooses the address of each attempt, or NULL */
    void *pick_arg;
    unsigned long master_gen; /* Sentinel: the master generation this connection reached */
    int refused; /* dropped for READONLY & co.: keep backing off until a command succeeds */
    uint64_t retry_at_us; /* end of the current back-off */
    /* Scripts this connection has sent as EVAL (so the server has them), by script id;
     * cleared with every new connection (see "Scripts" above). */
    uint64_t scripts[(SB_REDIS_SCRIPT_IDS + 63) / 64];
    int logged_noscript; /* "redis_script_reload" logged for this connection */
    uint64_t sent_seq;   /* commands sent on this connection (cmd_ctx.seq) */
    /* A replay (see "Scripts" above): after a NOSCRIPT, script commands are held here,
     * in order, until every command sent before it has had its first reply. */
    uint64_t replay_barrier; /* the last seq sent when the replay began; 0: none */
    size_t replay_open;      /* commands up to the barrier still without a first reply */
    size_t resent_pending;   /* resends (EVAL after NOSCRIPT) without their reply */
    struct cmd_ctx *held_head, *held_tail;
};

typedef struct cmd_ctx {
    sb_redis *r;
    sb_redis_reply_fn cb;
    void *arg;
    uint64_t sent_us; /* for switchboard_redis_command_duration_seconds */
    /* An EVALSHA's resend material, or NULL: the RESP of the command with the tail
     * (numkeys, keys, arguments) at SB_REDIS_EVALSHA_HEAD_MAX. */
    const sb_redis_script *script;
    char *buf;
    size_t taillen;
    int argc;
    uint64_t seq;         /* order of sending on this connection */
    int resent;           /* 1 once sent again as EVAL after NOSCRIPT */
    struct cmd_ctx *next; /* in the held list */
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

/* Sentinel: while backing off, look this often whether Sentinel named a new master. */
#define SENTINEL_RETRY_TICK_MS 50

static void schedule_retry(sb_redis *r)
{
    if (r->freeing)
        return;
    r->retry_at_us = sb_now_mono_us() + (uint64_t)r->backoff_ms * 1000u;
    struct timeval tv =
        ms_tv(r->url.sentinel && r->backoff_ms > SENTINEL_RETRY_TICK_MS ? SENTINEL_RETRY_TICK_MS
                                                                        : r->backoff_ms);
    evtimer_add(r->retry_ev, &tv);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Bookkeeping after a connection or an attempt ended (the context is gone or going). */
static void release_held(sb_redis *r, int send);

static void connection_lost(sb_redis *r, int was_up, const char *why)
{
    release_held(r, 0); /* held script commands end like the ones lost on the wire */
    r->replay_barrier = 0;
    evtimer_del(r->timeout_ev);
    evtimer_del(r->watchdog_ev);
    if (why != NULL && why[0] != '\0' && why != r->error)
        snprintf(r->error, sizeof(r->error), "%s", why);
    if (was_up || !r->logged_down) {
        sb_log(SB_LOG_WARN, "redis_down", "Redis at %s %s: %s; retrying with back-off",
               r->url.where, was_up ? "connection lost" : "unreachable", r->error);
        r->logged_down = 1;
        snprintf(r->down_where, sizeof(r->down_where), "%s", r->url.where);
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
    sb_redis *r = arg;
    if (r->url.sentinel && sb_now_mono_us() < r->retry_at_us &&
        sb_sentinel_generation() == r->master_gen) {
        struct timeval tv = ms_tv(SENTINEL_RETRY_TICK_MS); /* a new master ends the wait */
        evtimer_add(r->retry_ev, &tv);
        return;
    }
    start_connect(r);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    sb_redis *r = arg;
    if (r->state == ST_UP && r->url.sentinel && sb_sentinel_generation() != r->master_gen) {
        drop_connection(r, "Sentinel switched the master");
        return;
    }
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
    if (!r->refused) /* a demoted master accepts connections: do not hammer it */
        r->backoff_ms = BACKOFF_MIN_MS;
    r->connects++;
    evtimer_del(r->timeout_ev);
    struct timeval tv = ms_tv(WATCHDOG_TICK_MS);
    evtimer_add(r->watchdog_ev, &tv);
    if (r->logged_down && strcmp(r->down_where, r->url.where) == 0)
        sb_log(SB_LOG_INFO, "redis_up", "Redis at %s is connected again", r->url.where);
    else if (r->logged_down) /* a connection that rotates over nodes (redis_int.h) */
        sb_log(SB_LOG_INFO, "redis_up", "Redis at %s is connected, in place of %s", r->url.where,
               r->down_where);
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
        r->step = HS_ROLE;
        /* fall through */
    case HS_ROLE:
        if (r->url.sentinel) { /* trust no address Sentinel gave before ROLE agrees */
            rc = redisAsyncCommand(r->ac, on_handshake_reply, r, "ROLE");
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
                 : r->step == HS_ROLE   ? "ROLE"
                                        : "PING",
                 rep->str);
        abort_soon(r, why);
        return;
    }
    if (r->step == HS_ROLE && !(rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                                rep->element[0]->type == REDIS_REPLY_STRING &&
                                strcmp(rep->element[0]->str, "master") == 0)) {
        sb_sentinel_suspect("a server Sentinel named as master answers ROLE as a replica");
        abort_soon(r, "not the master (ROLE): a failover is under way");
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
    if (r->url.sentinel) {
        if (sb_sentinel_master_addr(host, sizeof(host), &port, &r->master_gen) != SB_OK) {
            connection_lost(r, 0, "no master known from Sentinel yet");
            return;
        }
        sb_free(r->url.host);
        r->url.host = sb_strdup(host);
        r->url.port = port;
    } else if (r->pick != NULL && r->url.path == NULL &&
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
    memset(r->scripts, 0, sizeof(r->scripts)); /* a new server session has none of ours */
    r->logged_noscript = 0;
    r->replay_barrier = 0;
    r->replay_open = 0;
    r->resent_pending = 0;
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
    if (sb_redis_is_cluster_url(url)) {
        sb_cluster_addr seeds[SB_CLUSTER_MAX_SEEDS];
        size_t n;
        if (sb_redis_cluster_url_parse(url, &u, seeds, &n, err, sizeof(err)) != SB_OK)
            return NULL;
        sb_redis *r = redis_alloc(base, on_state, arg);
        r->url = u;
        r->cluster = sb_cluster_new(r, base, seeds, n, u.user, u.password);
        return r;
    }
    if (sb_redis_url_parse(url, &u, err, sizeof(err)) != SB_OK)
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

/* An error reply that says "not now, and not here": the server is not (or no longer) a
 * writable master (READONLY: a demoted master; MASTERDOWN: a replica cut from its
 * master; LOADING: a restart reading its dataset). The command did nothing. */
static const char *unavailable_reply(const redisReply *rep)
{
    static const char *const codes[] = {"READONLY ", "MASTERDOWN ", "LOADING "};
    if (rep == NULL || rep->type != REDIS_REPLY_ERROR || rep->str == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strncmp(rep->str, codes[i], strlen(codes[i])) == 0)
            return codes[i];
    return NULL;
}

static int script_known(const sb_redis *r, const sb_redis_script *s)
{
    return s->id >= 0 && (r->scripts[s->id / 64] >> (s->id % 64) & 1u) != 0;
}

static void script_mark(sb_redis *r, const sb_redis_script *s)
{
    if (s->id >= 0)
        r->scripts[s->id / 64] |= (uint64_t)1 << (s->id % 64);
}

static void on_command_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends the script command |c| (its tail in c->buf): EVALSHA when this connection has
 * loaded the script (c->buf then stays until the reply, for a resend), else EVAL (which
 * loads it; c->buf is freed). A hiredis return code. */
static int send_script(sb_redis *r, cmd_ctx *c)
{
    const char *tail = c->buf + SB_REDIS_EVALSHA_HEAD_MAX;
    int rc;
    if (!script_known(r, c->script)) {
        size_t len;
        char *cmd = sb_redis_resp_eval(c->script, c->argc, tail, c->taillen, &len);
        rc = redisAsyncFormattedCommand(r->ac, on_command_reply, c, cmd, len);
        sb_free(cmd);
        sb_free(c->buf);
        c->buf = NULL;
        if (rc == REDIS_OK)
            script_mark(r, c->script); /* every later EVALSHA here runs after this EVAL */
        return rc;
    }
    size_t hl = sb_redis_resp_evalsha_head(c->script, c->argc, c->buf);
    rc = redisAsyncFormattedCommand(r->ac, on_command_reply, c, tail - hl, hl + c->taillen);
    if (rc != REDIS_OK) {
        sb_free(c->buf);
        c->buf = NULL;
    }
    return rc;
}

/* Ends the held commands' wait: sends them in order; one that cannot be sent gets its
 * NULL reply like a command lost with the connection. */
static void release_held(sb_redis *r, int send)
{
    while (r->held_head != NULL) {
        cmd_ctx *c = r->held_head;
        r->held_head = c->next;
        if (r->held_head == NULL)
            r->held_tail = NULL;
        if (send && r->ac != NULL && r->state == ST_UP && send_script(r, c) == REDIS_OK)
            continue; /* pending already counts it */
        sb_free(c->buf);
        r->pending--;
        if (c->cb != NULL)
            c->cb(NULL, c->arg);
        sb_free(c);
    }
}

/* A first reply (not a resend's) of a command sent before the replay began. */
static void replay_progress(sb_redis *r, const cmd_ctx *c)
{
    if (r->replay_barrier == 0 || c->resent || c->seq > r->replay_barrier)
        return;
    if (--r->replay_open == 0) {
        r->replay_barrier = 0;
        release_held(r, 1); /* every resend is on the wire ahead of them */
    }
}

/* An EVALSHA answered NOSCRIPT did nothing: sends it again as EVAL, with the same
 * context, so its caller sees only the second reply. 0 when it could not be sent. */
static int resend_as_eval(sb_redis *r, cmd_ctx *c)
{
    if (r->replay_barrier == 0) {
        r->replay_barrier = r->sent_seq;
        /* every command pending was sent up to now; resends had their first reply */
        r->replay_open = r->pending - r->resent_pending;
        if (!r->logged_noscript) {
            r->logged_noscript = 1;
            sb_log(SB_LOG_INFO, "redis_script_reload",
                   "Redis at %s no longer has the scripts it ran (SCRIPT FLUSH?): sending them "
                   "again in full, in order",
                   r->url.where);
        }
    }
    memset(r->scripts, 0, sizeof(r->scripts)); /* a flush empties the whole cache */
    size_t len;
    char *cmd = sb_redis_resp_eval(c->script, c->argc, c->buf + SB_REDIS_EVALSHA_HEAD_MAX,
                                   c->taillen, &len);
    int rc = redisAsyncFormattedCommand(r->ac, on_command_reply, c, cmd, len);
    sb_free(cmd);
    sb_free(c->buf);
    c->buf = NULL;
    if (rc != REDIS_OK)
        return 0;
    script_mark(r, c->script);
    replay_progress(r, c); /* this was its first reply */
    c->resent = 1;
    r->resent_pending++;
    return 1;
}

static void on_command_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cmd_ctx *c = privdata;
    sb_redis *r = c->r;
    if (c->buf != NULL) {
        const redisReply *rep = reply;
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->str != NULL &&
            strncmp(rep->str, "NOSCRIPT", 8) == 0 && r->ac == ac && r->state == ST_UP &&
            resend_as_eval(r, c))
            return; /* still pending: the EVAL's reply comes back here */
        sb_free(c->buf);
        c->buf = NULL;
    }
    if (c->resent && r->resent_pending > 0)
        r->resent_pending--;
    else if (reply != NULL && r->ac == ac)
        replay_progress(r, c);
    r->pending--;
    r->progress_us = sb_now_mono_us();
    if (reply != NULL) /* NULL: dropped with the connection, never answered */
        sb_metrics_redis_command(r->progress_us - c->sent_us);
    const char *code = unavailable_reply(reply);
    if (code != NULL && r->ac == ac && r->state == ST_UP) {
        /* Callers treat it as a lost connection (503 + Retry-After, never 500), and the
         * connection is remade: to the new master once Sentinel names it. */
        char why[96];
        snprintf(why, sizeof(why), "the server answered %.*s: not a writable master now",
                 (int)strlen(code) - 1, code);
        if (r->url.sentinel)
            sb_sentinel_suspect(why);
        r->refused = 1;
        abort_soon(r, why);
    } else if (reply != NULL && r->refused && ((redisReply *)reply)->type != REDIS_REPLY_ERROR) {
        r->refused = 0;
        r->backoff_ms = BACKOFF_MIN_MS;
    }
    if (reply != NULL && r->url.sentinel && sb_sentinel_generation() != r->master_gen)
        code = "switched"; /* answered by a master Sentinel has replaced: not trusted */
    if (c->cb != NULL)
        c->cb(code != NULL ? NULL : reply, c->arg);
    sb_free(c);
}

/* Checks that a command may be sent and prepares its context; NULL with |*rc| set. */
static cmd_ctx *command_begin(sb_redis *r, sb_redis_reply_fn cb, void *arg, int *rc)
{
    if (r == NULL || __atomic_load_n(&r->state, __ATOMIC_RELAXED) != ST_UP || r->ac == NULL ||
        (r->url.sentinel && sb_sentinel_generation() != r->master_gen)) {
        *rc = SB_ERR_UNAVAILABLE; /* a replaced master is dropped by the next watchdog tick */
        return NULL;
    }
    if (r->channel != NULL) {
        *rc = SB_ERR_INVALID;
        return NULL;
    }
    cmd_ctx *c = sb_malloc(sizeof(*c));
    c->script = NULL;
    c->buf = NULL;
    c->resent = 0;
    c->next = NULL;
    c->seq = ++r->sent_seq;
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
    /* Formatted here, each length measured once (hiredis' own formatting costs several
     * times as much for a command of many arguments). */
    size_t small[64],
        *lens = argc <= (int)SB_ARRAY_LEN(small) ? small : sb_malloc((size_t)argc * sizeof(size_t));
    for (int i = 0; i < argc; i++)
        lens[i] = argvlen ? argvlen[i] : strlen(argv[i]);
    char head[32];
    head[0] = '*';
    size_t hl = 1 + sb_fmt_ll(head + 1, argc);
    size_t n = hl + 2 + sb_redis_resp_len(argc, argv, lens);
    char *buf = sb_malloc(n + 1);
    memcpy(buf, head, hl);
    memcpy(buf + hl, "\r\n", 2);
    sb_redis_resp_write(buf + hl + 2, argc, argv, lens);
    rc = redisAsyncFormattedCommand(r->ac, on_command_reply, c, buf, n);
    sb_free(buf);
    if (lens != small)
        sb_free(lens);
    return command_sent(r, c, rc);
}

int sb_redis_plain_script(sb_redis *r, const sb_redis_script *s, sb_redis_reply_fn cb, void *arg,
                          int argc, const char **argv, const size_t *argvlen)
{
    int rc;
    if (argc < 3)
        return SB_ERR_INVALID;
    cmd_ctx *c = command_begin(r, cb, arg, &rc);
    if (c == NULL)
        return rc;
    const char *const *tail = argv + 2;
    const size_t *taillens = argvlen ? argvlen + 2 : NULL;
    size_t lens[64]; /* measured once here rather than by both RESP passes */
    if (taillens == NULL && argc - 2 <= (int)SB_ARRAY_LEN(lens)) {
        for (int i = 0; i < argc - 2; i++)
            lens[i] = strlen(tail[i]);
        taillens = lens;
    }
    c->script = s;
    c->argc = argc;
    c->taillen = sb_redis_resp_len(argc - 2, tail, taillens);
    c->buf = sb_malloc(SB_REDIS_EVALSHA_HEAD_MAX + c->taillen + 1);
    sb_redis_resp_write(c->buf + SB_REDIS_EVALSHA_HEAD_MAX, argc - 2, tail, taillens);
    if (r->replay_barrier != 0) {
        /* A replay is under way: after the resends, in order (see "Scripts"). */
        c->next = NULL;
        if (r->held_tail != NULL)
            r->held_tail->next = c;
        else
            r->held_head = c;
        r->held_tail = c;
        return command_sent(r, c, REDIS_OK);
    }
    rc = send_script(r, c);
    return command_sent(r, c, rc);
}

int sb_redis_eval(sb_redis *r, const sb_redis_script *s, int nkeys, int nargs,
                  const char *const *args, sb_redis_reply_fn cb, void *arg)
{
    if (r == NULL || nargs < nkeys || nkeys < 0)
        return r == NULL ? SB_ERR_UNAVAILABLE : SB_ERR_INVALID;
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    const char *small[64];
    const char **argv = nargs + 3 <= (int)SB_ARRAY_LEN(small)
                            ? small
                            : sb_calloc((size_t)nargs + 3, sizeof(char *));
    argv[0] = "EVALSHA";
    argv[1] = s->sha;
    argv[2] = nk;
    for (int i = 0; i < nargs; i++)
        argv[3 + i] = args[i];
    int rc;
    if (r->cluster != NULL)
        rc = r->channel != NULL
                 ? SB_ERR_INVALID
                 : sb_cluster_script_argv(r->cluster, s, cb, arg, nargs + 3, argv, NULL);
    else
        rc = sb_redis_plain_script(r, s, cb, arg, nargs + 3, argv, NULL);
    if (argv != small)
        sb_free(argv);
    return rc;
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
    release_held(r, 0);
    event_free(r->retry_ev);
    event_free(r->timeout_ev);
    event_free(r->abort_ev);
    event_free(r->watchdog_ev);
    sb_free(r->channel);
    sb_redis_url_clear(&r->url);
    sb_free(r);
}
