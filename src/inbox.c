/*
 * inbox.c — long-poll waiters and the queue's wake-up channel (see inbox.h).
 *
 * Structures, per worker (an inbox_worker, created on the worker's first lease and kept
 * for the life of the process, reachable from g_inbox):
 *   groups   workspace id → group: the FIFO list of waiters of that workspace, whether a
 *            lease is in flight for its head ("pumping"), whether a wake-up came during
 *            it ("dirty"), and a timer for the earliest lease end it knows of;
 *   pending  workspace ids announced since the loop last looked, filled by the
 *            subscriber's thread under |lock| and emptied on the worker's loop by |wake|.
 * A lease with wait 0 is a waiter outside any group (one round trip, no timers).
 *
 * Lifetime: a waiter with a lease in flight is owned by that lease's reply (hiredis
 * runs every callback exactly once, with NULL when the connection drops), so on_gone
 * and timeouts only mark it; otherwise the waiter is freed where it ends. A group lives
 * while it has waiters or a lease in flight. Nothing is freed inside the libevent or
 * Redis callback of the object being freed except the object whose callback it is, at
 * its very end.
 *
 * Never: lease from inside the subscriber's thread, hold |lock| while calling out, or
 * keep a lease for a client that is gone (it is released at once, uncounted).
 */
#include "switchboard/inbox.h"
#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/worker.h"
#include "switchboard/strmap.h"
#include "switchboard/util.h"
#include "switchboard/wake.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define GUARD_MS 250
#define LEASE_END_SLACK_MS 5

typedef struct inbox_worker inbox_worker;
typedef struct group group;
typedef struct waiter waiter;

struct waiter {
    waiter *prev, *next; /* in the group's list */
    group *g;            /* NULL for a lease without wait */
    inbox_worker *iw;
    sb_request *req; /* holds a reference */
    char ws[SB_WS_ID_MAX + 1];
    int max;
    int64_t lease_ms;
    struct event *timer; /* the wait deadline (grouped waiters) */
    int in_flight;       /* a lease for this waiter is outstanding */
    int expired;         /* the deadline passed (or shutdown) while in flight */
    int abandoned;       /* the client went away while in flight */
    sb_inbox_answer_fn fn;
    void *arg;
};

struct group {
    inbox_worker *iw;
    char ws[SB_WS_ID_MAX + 1];
    waiter *head, *tail;
    int pumping;
    int dirty;
    struct event *timer; /* the earliest lease end known */
};

struct inbox_worker {
    inbox_worker *next;
    sb_worker *w;
    struct event_base *base;
    pthread_mutex_t lock; /* pending, pending_all, and writes to groups */
    sb_strmap *groups;    /* ws → group; read off-thread (presence) under lock */
    sb_strmap *pending;   /* ws → (void *)1 */
    int pending_all;
    sb_wake *wake; /* rung by the subscriber's thread (wake.h) */
    struct event *guard;
    size_t nwaiters;
    int closing;
};

static struct {
    pthread_mutex_t lock; /* list, sub, sub_host */
    inbox_worker *list;
    sb_redis *sub;
    sb_worker *sub_host;
} g_inbox = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void group_pump(group *g);
static void on_wake(void *arg);
static void on_guard(evutil_socket_t fd, short what, void *arg);

/* ---- announcements (subscriber thread → worker loops) ---- */

static void announce(const char *ws)
{
    pthread_mutex_lock(&g_inbox.lock);
    for (inbox_worker *iw = g_inbox.list; iw != NULL; iw = iw->next) {
        int wake = 0;
        pthread_mutex_lock(&iw->lock);
        if (ws == NULL) {
            wake = sb_strmap_count(iw->groups) > 0;
            iw->pending_all |= wake;
        } else if (sb_strmap_get(iw->groups, ws) != NULL) {
            sb_strmap_put(iw->pending, ws, (void *)1);
            wake = 1;
        }
        pthread_mutex_unlock(&iw->lock);
        if (wake)
            sb_wake_ring(iw->wake);
    }
    pthread_mutex_unlock(&g_inbox.lock);
}

static void on_notify(const char *channel, const char *data, size_t len, void *arg)
{
    if (len > 0 && len <= SB_WS_ID_MAX && strlen(data) == len)
        announce(data);
}

static void on_sub_state(sb_redis *r, int up, void *arg)
{
    if (up)
        announce(NULL); /* anything announced while we were not subscribed */
}

/* Starts the process' subscriber on |w|'s loop unless one runs. */
static void ensure_subscriber(sb_worker *w)
{
    pthread_mutex_lock(&g_inbox.lock);
    if (g_inbox.sub == NULL && !w->draining) {
        g_inbox.sub = sb_redis_new(w->base, w->cfg->redis_url, on_sub_state, NULL);
        if (g_inbox.sub != NULL) {
            sb_redis_subscribe(g_inbox.sub, SB_QUEUE_NOTIFY_CHANNEL, on_notify, NULL);
            g_inbox.sub_host = w;
        }
    }
    pthread_mutex_unlock(&g_inbox.lock);
}

static inbox_worker *find_worker(const sb_worker *w)
{
    pthread_mutex_lock(&g_inbox.lock);
    inbox_worker *iw = g_inbox.list;
    while (iw != NULL && iw->w != w)
        iw = iw->next;
    pthread_mutex_unlock(&g_inbox.lock);
    return iw;
}

/* The inbox state of |w|, created on its loop at the first use. */
static inbox_worker *worker_state(sb_worker *w)
{
    inbox_worker *iw = find_worker(w);
    if (iw != NULL)
        return iw;
    iw = sb_calloc(1, sizeof(*iw));
    iw->w = w;
    iw->base = w->base;
    pthread_mutex_init(&iw->lock, NULL);
    iw->groups = sb_strmap_new();
    iw->pending = sb_strmap_new();
    iw->wake = sb_wake_new(w->base, on_wake, iw);
    if (iw->wake == NULL)
        sb_log(SB_LOG_ERROR, "inbox_wake_failed",
               "worker %d: no descriptor for the inbox's wake-up; its long-polls answer at "
               "their deadline only",
               w->id);
    iw->guard = event_new(w->base, -1, EV_PERSIST, on_guard, iw);
    pthread_mutex_lock(&g_inbox.lock);
    iw->next = g_inbox.list;
    g_inbox.list = iw;
    pthread_mutex_unlock(&g_inbox.lock);
    return iw;
}

/* ---- waiters ---- */

static void on_released(int err, const sb_queue_record *rec, void *arg)
{
    if (err != SB_OK && err != SB_ERR_FORBIDDEN)
        sb_log(SB_LOG_WARN, "inbox_release_failed",
               "a lease for a client that went away could not be released; it ends on its own");
}

/* Gives back what a lease took for a client that is no longer there. */
static void release_batch(sb_worker *w, const char *ws, const sb_queue_batch *b)
{
    sb_queue_opts o = sb_queue_opts_of(w->cfg);
    for (size_t i = 0; b != NULL && i < b->n; i++)
        sb_queue_nack(w->redis, &o, ws, b->items[i].id, 1, on_released, NULL);
}

static void unlink_waiter(waiter *wt)
{
    group *g = wt->g;
    if (g == NULL)
        return;
    if (wt->prev != NULL)
        wt->prev->next = wt->next;
    else
        g->head = wt->next;
    if (wt->next != NULL)
        wt->next->prev = wt->prev;
    else
        g->tail = wt->prev;
    wt->prev = wt->next = NULL;
    wt->g = NULL;
    wt->iw->nwaiters--;
    if (wt->iw->nwaiters == 0)
        event_del(wt->iw->guard);
}

static void waiter_free(waiter *wt)
{
    unlink_waiter(wt);
    if (wt->timer != NULL)
        event_free(wt->timer);
    if (wt->req->on_gone_arg == wt) {
        wt->req->on_gone = NULL;
        wt->req->on_gone_arg = NULL;
    }
    sb_request_unref(wt->req);
    sb_free(wt);
}

/* Answers |wt| (not in flight) with |err| / |b| and frees it; a client that is gone gets
 * nothing and what |b| leased is released. */
static void waiter_finish(waiter *wt, int err, const sb_queue_batch *b)
{
    sb_request *req = wt->req;
    if (req->on_gone_arg == wt) {
        req->on_gone = NULL;
        req->on_gone_arg = NULL;
    }
    if (sb_request_gone(req) || wt->abandoned)
        release_batch(wt->iw->w, wt->ws, b);
    else
        wt->fn(req, err, b, wt->arg);
    waiter_free(wt);
}

static void finish_empty(waiter *wt)
{
    sb_queue_batch empty;
    memset(&empty, 0, sizeof(empty));
    empty.next_lease_end_ms = -1;
    waiter_finish(wt, SB_OK, &empty);
}

static void group_maybe_free(group *g)
{
    if (g->head != NULL || g->pumping)
        return;
    inbox_worker *iw = g->iw;
    pthread_mutex_lock(&iw->lock);
    sb_strmap_remove(iw->groups, g->ws);
    pthread_mutex_unlock(&iw->lock);
    event_free(g->timer);
    sb_free(g);
}

static void on_group_timer(evutil_socket_t fd, short what, void *arg)
{
    group_pump(arg);
}

static void arm_group_timer(group *g, long long in_ms)
{
    if (in_ms < 0 || g->head == NULL) {
        event_del(g->timer);
        return;
    }
    in_ms += LEASE_END_SLACK_MS;
    struct timeval tv = {(time_t)(in_ms / 1000), (suseconds_t)((in_ms % 1000) * 1000)};
    event_add(g->timer, &tv);
}

static void on_group_lease(int err, const sb_queue_batch *b, void *arg)
{
    waiter *wt = arg;
    group *g = wt->g;
    g->pumping = 0;
    wt->in_flight = 0;
    if (err != SB_OK) {
        waiter_finish(wt, err, NULL);
        group_pump(g);
        return;
    }
    if (b->n > 0 || wt->expired || wt->abandoned || g->iw->closing || sb_request_gone(wt->req)) {
        int more = b->ready > 0 || g->dirty;
        long long next = b->next_lease_end_ms;
        waiter_finish(wt, SB_OK, b);
        if (more)
            group_pump(g);
        else {
            arm_group_timer(g, next);
            group_maybe_free(g);
        }
        return;
    }
    if (g->dirty) {
        group_pump(g);
        return;
    }
    arm_group_timer(g, b->next_lease_end_ms);
}

/* Leases for the head waiter unless a lease is in flight; moves on past waiters whose
 * lease cannot be sent. Frees |g| when it has nothing left to do. */
static void group_pump(group *g)
{
    inbox_worker *iw = g->iw;
    while (!g->pumping) {
        waiter *wt = g->head;
        if (wt == NULL) {
            group_maybe_free(g);
            return;
        }
        if (iw->closing) {
            finish_empty(wt);
            continue;
        }
        g->dirty = 0;
        g->pumping = 1;
        wt->in_flight = 1;
        sb_queue_opts o = sb_queue_opts_of(iw->w->cfg);
        if (sb_queue_lease(iw->w->redis, &o, g->ws, wt->max, wt->lease_ms, on_group_lease, wt) !=
            SB_OK) {
            g->pumping = 0;
            wt->in_flight = 0;
            waiter_finish(wt, SB_ERR_UNAVAILABLE, NULL);
        }
    }
}

static void on_wait_deadline(evutil_socket_t fd, short what, void *arg)
{
    waiter *wt = arg;
    if (wt->in_flight) {
        wt->expired = 1;
        return;
    }
    group *g = wt->g;
    finish_empty(wt);
    group_maybe_free(g);
}

static void on_waiter_gone(sb_request *req, void *arg)
{
    waiter *wt = arg;
    if (wt->in_flight) {
        wt->abandoned = 1;
        return;
    }
    group *g = wt->g;
    waiter_free(wt);
    if (g != NULL)
        group_maybe_free(g);
}

typedef struct name_list {
    char **names;
    size_t n;
} name_list;

static void collect_name(const char *key, void *value, void *arg)
{
    name_list *l = arg;
    l->names[l->n++] = sb_strdup(key);
}

static void on_wake(void *arg)
{
    inbox_worker *iw = arg;
    pthread_mutex_lock(&iw->lock);
    sb_strmap *pending = iw->pending;
    int all = iw->pending_all;
    iw->pending = sb_strmap_new();
    iw->pending_all = 0;
    /* Copy the names under the lock: pumping changes the groups. */
    const sb_strmap *from = all ? iw->groups : pending;
    name_list l = {sb_calloc(sb_strmap_count(from) + 1, sizeof(char *)), 0};
    sb_strmap_foreach(from, collect_name, &l);
    pthread_mutex_unlock(&iw->lock);
    sb_strmap_free(pending);
    for (size_t i = 0; i < l.n; i++) {
        group *g = sb_strmap_get(iw->groups, l.names[i]);
        if (g != NULL) {
            if (g->pumping)
                g->dirty = 1;
            else
                group_pump(g);
        }
        sb_free(l.names[i]);
    }
    sb_free(l.names);
}

/* ---- shutdown ---- */

static void close_group(const char *key, void *value, void *arg)
{
    group *g = value;
    name_list *l = arg;
    l->names[l->n++] = sb_strdup(g->ws);
}

void sb_inbox_shutdown(sb_worker *w)
{
    inbox_worker *iw = find_worker(w);
    if (iw != NULL && !iw->closing) {
        iw->closing = 1;
        event_del(iw->guard);
        name_list l = {sb_calloc(sb_strmap_count(iw->groups) + 1, sizeof(char *)), 0};
        sb_strmap_foreach(iw->groups, close_group, &l);
        for (size_t i = 0; i < l.n; i++) {
            group *g = sb_strmap_get(iw->groups, l.names[i]);
            sb_free(l.names[i]);
            if (g == NULL)
                continue;
            event_del(g->timer);
            /* Waiters behind an in-flight lease are answered when it returns. */
            waiter *wt = g->head;
            while (wt != NULL) {
                waiter *next = wt->next;
                if (wt->in_flight)
                    wt->expired = 1;
                else
                    finish_empty(wt);
                wt = next;
            }
            group_maybe_free(g);
        }
        sb_free(l.names);
    }
    sb_redis *sub = NULL;
    pthread_mutex_lock(&g_inbox.lock);
    if (g_inbox.sub_host == w) {
        sub = g_inbox.sub;
        g_inbox.sub = NULL;
        g_inbox.sub_host = NULL;
    }
    pthread_mutex_unlock(&g_inbox.lock);
    sb_redis_free(sub);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    inbox_worker *iw = arg;
    if (iw->w->draining)
        sb_inbox_shutdown(iw->w);
}

size_t sb_inbox_waiting(const sb_worker *w)
{
    const inbox_worker *iw = find_worker(w);
    return iw != NULL ? iw->nwaiters : 0;
}

/* ---- leasing ---- */

static void on_direct_lease(int err, const sb_queue_batch *b, void *arg)
{
    waiter *wt = arg;
    wt->in_flight = 0;
    waiter_finish(wt, err, b);
}

void sb_inbox_lease(sb_request *req, const char *ws, const sb_inbox_params *p,
                    sb_inbox_answer_fn fn, void *arg)
{
    sb_worker *w = req->worker;
    inbox_worker *iw = worker_state(w);
    waiter *wt = sb_calloc(1, sizeof(*wt));
    sb_request_ref(req);
    wt->req = req;
    wt->iw = iw;
    snprintf(wt->ws, sizeof(wt->ws), "%s", ws);
    wt->max = p->max;
    wt->lease_ms = p->lease_ms;
    wt->fn = fn;
    wt->arg = arg;
    req->on_gone = on_waiter_gone;
    req->on_gone_arg = wt;

    if (p->wait_ms <= 0 || iw->closing || w->draining) {
        wt->in_flight = 1;
        sb_queue_opts o = sb_queue_opts_of(w->cfg);
        if (sb_queue_lease(w->redis, &o, ws, p->max, p->lease_ms, on_direct_lease, wt) != SB_OK) {
            wt->in_flight = 0;
            waiter_finish(wt, SB_ERR_UNAVAILABLE, NULL);
        }
        return;
    }

    ensure_subscriber(w);
    group *g = sb_strmap_get(iw->groups, ws);
    if (g == NULL) {
        g = sb_calloc(1, sizeof(*g));
        g->iw = iw;
        snprintf(g->ws, sizeof(g->ws), "%s", ws);
        g->timer = evtimer_new(w->base, on_group_timer, g);
        pthread_mutex_lock(&iw->lock);
        sb_strmap_put(iw->groups, ws, g);
        pthread_mutex_unlock(&iw->lock);
    }
    wt->g = g;
    wt->prev = g->tail;
    if (g->tail != NULL)
        g->tail->next = wt;
    else
        g->head = wt;
    g->tail = wt;
    if (iw->nwaiters++ == 0) {
        struct timeval gtv = {0, GUARD_MS * 1000};
        event_add(iw->guard, &gtv);
    }
    wt->timer = evtimer_new(w->base, on_wait_deadline, wt);
    struct timeval tv = {(time_t)(p->wait_ms / 1000), (suseconds_t)((p->wait_ms % 1000) * 1000)};
    event_add(wt->timer, &tv);
    if (g->pumping)
        g->dirty = 1; /* the lease in flight may have looked before this waiter came */
    else
        group_pump(g);
}
