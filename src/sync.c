/*
 * sync.c — versioned replica tables and the pub/sub loop that keeps them coherent
 * (see sync.h for the protocol and its ordering argument).
 *
 * Two parts:
 *  - sb_replica: a string-keyed table of values with a revision per key, tombstones
 *    and a snapshot floor, behind one rwlock. registry.c and auth.c build their
 *    replicas on it, so the ordering rules exist once. Values replaced or dropped are
 *    released after the lock is let go (a release may free an endpoint).
 *  - The sync loop, on worker 0's event_base: a subscriber sb_redis on SB_SYNC_CHANNEL
 *    and a command sb_redis for snapshots (a subscribed connection carries no other
 *    commands). Every time the subscriber comes up a snapshot is requested; "ready"
 *    turns on only for a snapshot requested after the current subscription started,
 *    since only then no change can have fallen between the two.
 *
 * Never: hold a replica lock while calling out (logging aside), or mark the replica
 * ready from a snapshot older than the current subscription.
 */
#include "switchboard/sync.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/redis_safety.h"
#include "switchboard/strmap.h"
#include "switchboard/util.h"
#include "switchboard/wake.h"

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- Lua shared by every writer script ---- */

const char sb_sync_lua_prelude[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local function sb_num(n) return string.format('%.0f', n) end\n"
    "local function sb_rev_current(k)\n"
    "  local v = redis.call('GET', k)\n"
    "  if not v then\n"
    "    local t = redis.call('TIME')\n"
    "    v = t[1] .. string.format('%06d', tonumber(t[2]))\n"
    "    redis.call('SET', k, v)\n"
    "  end\n"
    "  return tonumber(v)\n"
    "end\n"
    "local function sb_bump(k)\n"
    "  local cur = sb_rev_current(k)\n"
    "  local t = redis.call('TIME')\n"
    "  local rev = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "  if rev <= cur then rev = cur + 1 end\n"
    "  redis.call('SET', k, sb_num(rev))\n"
    "  return rev\n"
    "end\n"
    "local function sb_publish(typ, op, key, rev, rec)\n"
    "  local m = '{\"type\":\"' .. typ .. '\",\"op\":\"' .. op .. '\",\"key\":' ..\n"
    "    cjson.encode(key) .. ',\"rev\":' .. sb_num(rev)\n"
    "  if rec then m = m .. ',\"record\":' .. rec end\n"
    "  redis.call('PUBLISH', '" SB_SYNC_CHANNEL "', m .. '}')\n"
    "end\n"
    "local function sb_ep_record(k, ws)\n"
    "  local w = ws .. ':'\n"
    "  local f = redis.call('HMGET', k, w .. 'config', w .. 'secret', w .. 'lease_expires_at_ms',\n"
    "    w .. 'active_tasks', w .. 'heartbeat_at_ms', w .. 'probe')\n"
    "  if not f[1] then return nil end\n"
    "  return '{\"inbound_secret\":' .. cjson.encode(f[2] or '') ..\n"
    "    ',\"lease_expires_at_ms\":' .. (f[3] or '0') .. ',\"active_tasks\":' ..\n"
    "    (f[4] or '0') .. ',\"heartbeat_at_ms\":' .. (f[5] or '0') .. ',\"probe\":' ..\n"
    "    (f[6] or 'null') .. ',' ..\n"
    "    string.sub(f[1], 2)\n"
    "end\n";

/* KEYS: endpoint index, token hash, revision, endpoint hash. Returns {rev, {endpoint
 * records}, {token records}} read atomically. */
static const char snapshot_lua[] = "local rev = sb_rev_current(KEYS[3])\n"
                                   "local eps = {}\n"
                                   "for _, ws in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
                                   "  local rec = sb_ep_record(KEYS[4], ws)\n"
                                   "  if rec then eps[#eps + 1] = rec end\n"
                                   "end\n"
                                   "return {rev, eps, redis.call('HVALS', KEYS[2])}\n";

/* Layout 1 → 2 on a single Redis (layout 1 never worked on a cluster): every global key
 * is renamed under {sb}, each workspace's endpoint hash and token index are folded into
 * the {sb} hashes (fields "<ws>:<name>"), the queue index becomes a ZSET. Layout 2 → 3
 * moves nothing: layout 3 packs a new message's unchanging fields into one field ("h",
 * proto/redis-schema.md), and every script still reads a message written the layout-2
 * way (queue_int.h, Q_FIELDS), which lives at most its expiry + --queue-ttl-s. The schema
 * key is written last. It is one script, so it runs whole or not at all. Returns the keys
 * moved. */
#define SCHEMA_V SB_STR(SB_SYNC_SCHEMA_VERSION)
// clang-format off
static const char migrate_lua[] =
    "local v = redis.call('GET', '" SB_SYNC_SCHEMA_KEY "')\n"
    "if v == '" SCHEMA_V "' then return 0 end\n"
    "if tonumber(v) and tonumber(v) > " SCHEMA_V " then\n"
    "  return redis.error_reply('key layout ' .. v .. ' is newer than this release')\n"
    "end\n"
    "if v == '2' then\n"
    "  redis.call('SET', '" SB_SYNC_SCHEMA_KEY "', '" SCHEMA_V "')\n"
    "  return 0\n"
    "end\n"
    "local n = 0\n"
    "local function mv(from, to)\n"
    "  if redis.call('EXISTS', from) == 1 then redis.call('RENAME', from, to) n = n + 1 end\n"
    "end\n"
    "local function fold(from, to, ws)\n"
    "  local f = redis.call('HGETALL', from)\n"
    "  for i = 1, #f, 2 do redis.call('HSET', to, ws .. ':' .. f[i], f[i + 1]) end\n"
    "  if #f > 0 then redis.call('DEL', from) n = n + 1 end\n"
    "end\n"
    "for _, ws in ipairs(redis.call('SMEMBERS', 'sb:endpoints')) do\n"
    "  fold('sb:{' .. ws .. '}:endpoint', '" SB_SYNC_EP_KEY "', ws)\n"
    "end\n"
    "for _, rec in ipairs(redis.call('HVALS', 'sb:tokens')) do\n"
    "  local ok, t = pcall(cjson.decode, rec)\n"
    "  if ok and type(t) == 'table' and type(t.workspace_id) == 'string' then\n"
    "    fold('sb:{' .. t.workspace_id .. '}:tokens', '" SB_SYNC_WS_TOKENS_KEY
    "', t.workspace_id)\n"
    "  end\n"
    "end\n"
    "mv('sb:endpoints', '" SB_SYNC_ENDPOINTS_KEY "')\n"
    "mv('sb:tokens', '" SB_SYNC_TOKENS_KEY "')\n"
    "mv('sb:rev', '" SB_SYNC_REV_KEY "')\n"
    "mv('sb:fallbacks', '" SB_SYNC_FALLBACKS_KEY "')\n"
    "if redis.call('EXISTS', 'sb:queues') == 1 then\n"
    "  local t = redis.call('TIME')\n"
    "  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  for _, ws in ipairs(redis.call('SMEMBERS', 'sb:queues')) do\n"
    "    redis.call('ZADD', '" SB_SYNC_QUEUES_KEY "', now, ws)\n"
    "  end\n"
    "  redis.call('DEL', 'sb:queues')\n"
    "  n = n + 1\n"
    "end\n"
    "redis.call('DEL', 'sb:instances')\n"
    "redis.call('SET', '" SB_SYNC_SCHEMA_KEY "', '" SCHEMA_V "')\n"
    "return n\n";
// clang-format on

int sb_sync_migrate(const char *redis_url, int timeout_ms, char *err, size_t errlen)
{
    if (strncmp(redis_url, "redis+cluster://", 16) == 0)
        return SB_OK; /* layout 1 never ran on a cluster: nothing to move */
    /* A read first: a Redis already at this layout is not written to at start (it may be
     * paused for writes, or a replica about to be promoted). */
    char have[16];
    int rc = sb_redis_get_sync(redis_url, timeout_ms, SB_SYNC_SCHEMA_KEY, have, sizeof(have), err,
                               errlen);
    if (rc != SB_OK || strcmp(have, SCHEMA_V) == 0)
        return rc;
    /* A layout newer than ours was written by a later release: this one cannot read it,
     * and migrating would mark the data as ours. Refuse to start instead. */
    long v;
    if (sb_parse_long(have, SB_SYNC_SCHEMA_VERSION + 1, 1000000, &v) == SB_OK) {
        snprintf(err, errlen,
                 "Redis holds key layout %ld (%s), newer than this release's layout %d: a later "
                 "release wrote it; run that release, or an empty Redis",
                 v, SB_SYNC_SCHEMA_KEY, SB_SYNC_SCHEMA_VERSION);
        return SB_ERR_INVALID;
    }
    long long moved = 0;
    rc = sb_redis_eval_sync(redis_url, timeout_ms, migrate_lua, &moved, err, errlen);
    if (rc == SB_OK && moved > 0)
        sb_log(SB_LOG_INFO, "redis_layout_migrated",
               "moved %lld key(s) of key layout 1 to layout %d (registry and indexes under {sb})",
               moved, SB_SYNC_SCHEMA_VERSION);
    return rc;
}

int sb_sync_eval(sb_redis *r, const char *body, int nkeys, int nargs, const char *const *args,
                 void (*cb)(redisReply *reply, void *arg), void *arg)
{
    return sb_sync_eval_lib(r, NULL, body, nkeys, nargs, args, cb, arg);
}

int sb_sync_eval_lib(sb_redis *r, const char *lib, const char *body, int nkeys, int nargs,
                     const char *const *args, void (*cb)(redisReply *reply, void *arg), void *arg)
{
    /* By SHA: the text is built and hashed once per script (redis.h, Scripts). */
    const sb_redis_script *s = sb_redis_script_get3(sb_sync_lua_prelude, lib, body);
    return sb_redis_eval(r, s, nkeys, nargs, args, cb, arg) == SB_OK ? SB_OK : SB_ERR_UNAVAILABLE;
}

/* ---- sb_replica ---- */

typedef struct slot {
    long long rev;
    void *value; /* NULL: tombstone */
    unsigned mark;
} slot;

struct sb_replica {
    pthread_rwlock_t lock;
    sb_strmap *map; /* key -> slot* */
    long long floor;
    unsigned gen;
    void (*release)(void *value);
};

/* Values to release once the lock is let go. */
typedef struct garbage {
    void **items;
    size_t n, cap;
} garbage;

static void garbage_add(garbage *g, void *v)
{
    if (v == NULL)
        return;
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 16;
        g->items = sb_realloc(g->items, g->cap * sizeof(void *));
    }
    g->items[g->n++] = v;
}

static void garbage_release(garbage *g, void (*release)(void *))
{
    for (size_t i = 0; i < g->n; i++)
        release(g->items[i]);
    sb_free(g->items);
    memset(g, 0, sizeof(*g));
}

/* Every replica, so a rebase (a Redis that lost data or went back in time) reaches the
 * tables registry.c and auth.c keep without this module naming them. */
#define MAX_REPLICAS 8
static struct {
    pthread_mutex_t lock;
    sb_replica *list[MAX_REPLICAS];
} g_replicas = {.lock = PTHREAD_MUTEX_INITIALIZER};

sb_replica *sb_replica_new(void (*release)(void *value))
{
    sb_replica *rp = sb_calloc(1, sizeof(*rp));
    pthread_rwlock_init(&rp->lock, NULL);
    rp->map = sb_strmap_new();
    rp->release = release;
    pthread_mutex_lock(&g_replicas.lock);
    for (size_t i = 0; i < MAX_REPLICAS; i++) {
        if (g_replicas.list[i] == NULL) {
            g_replicas.list[i] = rp;
            break;
        }
    }
    pthread_mutex_unlock(&g_replicas.lock);
    return rp;
}

static void demote_slot(const char *key, void *value, void *arg)
{
    ((slot *)value)->rev = 0;
}

void sb_replica_rebase(sb_replica *rp)
{
    pthread_rwlock_wrlock(&rp->lock);
    sb_strmap_foreach(rp->map, demote_slot, NULL);
    rp->floor = 0;
    pthread_rwlock_unlock(&rp->lock);
}

/* Rebases every replica (see sb_replica_rebase). */
static void rebase_replicas(void)
{
    pthread_mutex_lock(&g_replicas.lock);
    for (size_t i = 0; i < MAX_REPLICAS; i++)
        if (g_replicas.list[i] != NULL)
            sb_replica_rebase(g_replicas.list[i]);
    pthread_mutex_unlock(&g_replicas.lock);
}

static void collect_slot(const char *key, void *value, void *arg)
{
    slot *s = value;
    garbage_add(arg, s->value);
    sb_free(s);
}

void sb_replica_free(sb_replica *rp)
{
    if (rp == NULL)
        return;
    pthread_mutex_lock(&g_replicas.lock);
    for (size_t i = 0; i < MAX_REPLICAS; i++)
        if (g_replicas.list[i] == rp)
            g_replicas.list[i] = NULL;
    pthread_mutex_unlock(&g_replicas.lock);
    garbage g = {0};
    sb_strmap_foreach(rp->map, collect_slot, &g);
    sb_strmap_free(rp->map);
    garbage_release(&g, rp->release);
    pthread_rwlock_destroy(&rp->lock);
    sb_free(rp);
}

int sb_replica_apply(sb_replica *rp, const char *key, void *value, long long rev)
{
    void *old = NULL;
    int applied = 0;
    pthread_rwlock_wrlock(&rp->lock);
    if (rev > rp->floor) {
        slot *s = sb_strmap_get(rp->map, key);
        if (s == NULL) {
            s = sb_calloc(1, sizeof(*s)); /* rev 0: below every revision that passes */
            sb_strmap_put(rp->map, key, s);
        }
        if (rev > s->rev) {
            old = s->value;
            s->value = value;
            s->rev = rev;
            applied = 1;
        }
    }
    pthread_rwlock_unlock(&rp->lock);
    if (!applied)
        old = value;
    if (old != NULL)
        rp->release(old);
    return applied;
}

typedef struct sweep {
    unsigned gen;
    long long rev;
    int all;
    char **keys;
    size_t n, cap;
} sweep;

static void sweep_collect(const char *key, void *value, void *arg)
{
    sweep *sw = arg;
    const slot *s = value;
    if (!sw->all && (s->mark == sw->gen || s->rev > sw->rev))
        return;
    if (sw->n == sw->cap) {
        sw->cap = sw->cap ? sw->cap * 2 : 16;
        sw->keys = sb_realloc(sw->keys, sw->cap * sizeof(char *));
    }
    sw->keys[sw->n++] = sb_strdup(key);
}

/* Removes every slot |sw| selects (see sweep_collect) from |rp|'s map, their values
 * into |g|. Leaves |sw| empty for another pass; |sw|->keys stays allocated. */
static void sweep_remove(sb_replica *rp, sweep *sw, garbage *g)
{
    sb_strmap_foreach(rp->map, sweep_collect, sw);
    for (size_t i = 0; i < sw->n; i++) {
        slot *s = sb_strmap_remove(rp->map, sw->keys[i]);
        garbage_add(g, s->value);
        sb_free(s);
        sb_free(sw->keys[i]);
    }
    sw->n = 0;
}

void sb_replica_apply_snapshot(sb_replica *rp, size_t n, const char *const *keys, void **values,
                               long long rev)
{
    garbage g = {0};
    sweep sw = {0};
    pthread_rwlock_wrlock(&rp->lock);
    sw.gen = ++rp->gen;
    sw.rev = rev;
    if (rev < rp->floor) {
        /* The revision went backwards: nothing we hold can be ordered against it. */
        sb_log(SB_LOG_WARN, "sync_regression",
               "snapshot revision %lld is below the previous %lld: replacing the replica", rev,
               rp->floor);
        sw.all = 1;
        sweep_remove(rp, &sw, &g);
        sw.all = 0;
    }
    for (size_t i = 0; i < n; i++) {
        slot *s = sb_strmap_get(rp->map, keys[i]);
        if (s == NULL) {
            s = sb_calloc(1, sizeof(*s));
            sb_strmap_put(rp->map, keys[i], s);
        }
        if (s->rev > rev) {
            garbage_add(&g, values[i]); /* a message newer than the snapshot wins */
        } else {
            garbage_add(&g, s->value);
            s->value = values[i];
            s->rev = rev;
        }
        s->mark = sw.gen;
    }
    sweep_remove(rp, &sw, &g);
    rp->floor = rev;
    pthread_rwlock_unlock(&rp->lock);
    sb_free(sw.keys);
    garbage_release(&g, rp->release);
}

int sb_replica_read(sb_replica *rp, const char *key, void (*fn)(void *value, void *arg), void *arg)
{
    int found = 0;
    pthread_rwlock_rdlock(&rp->lock);
    const slot *s = sb_strmap_get(rp->map, key);
    if (s != NULL && s->value != NULL) {
        fn(s->value, arg);
        found = 1;
    }
    pthread_rwlock_unlock(&rp->lock);
    return found;
}

typedef struct walk {
    void (*fn)(const char *key, void *value, void *arg);
    void *arg;
    size_t count;
} walk;

static void walk_live(const char *key, void *value, void *arg)
{
    walk *w = arg;
    const slot *s = value;
    if (s->value == NULL)
        return;
    w->count++;
    if (w->fn != NULL)
        w->fn(key, s->value, w->arg);
}

void sb_replica_foreach(sb_replica *rp, void (*fn)(const char *key, void *value, void *arg),
                        void *arg)
{
    walk w = {fn, arg, 0};
    pthread_rwlock_rdlock(&rp->lock);
    sb_strmap_foreach(rp->map, walk_live, &w);
    pthread_rwlock_unlock(&rp->lock);
}

size_t sb_replica_count(sb_replica *rp)
{
    walk w = {NULL, NULL, 0};
    pthread_rwlock_rdlock(&rp->lock);
    sb_strmap_foreach(rp->map, walk_live, &w);
    pthread_rwlock_unlock(&rp->lock);
    return w.count;
}

long long sb_replica_floor(sb_replica *rp)
{
    pthread_rwlock_rdlock(&rp->lock);
    long long f = rp->floor;
    pthread_rwlock_unlock(&rp->lock);
    return f;
}

/* ---- messages ---- */

static sb_sync_table g_tables[SB_SYNC__TABLES];

void sb_sync_register(sb_sync_table_id id, const sb_sync_table *t)
{
    if ((unsigned)id >= SB_SYNC__TABLES)
        return;
    if (t != NULL)
        g_tables[id] = *t;
    else
        memset(&g_tables[id], 0, sizeof(g_tables[id]));
}

static void barrier_ack(const char *instance, long long rev);

/* Applies one message; for a change (not an ack) sets *|changed_rev| to its revision. */
static int apply_message(const char *data, size_t len, long long *changed_rev)
{
    json_t *msg = json_loadb(data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(msg, "type"));
    const char *op = json_string_value(json_object_get(msg, "op"));
    const char *key = json_string_value(json_object_get(msg, "key"));
    const json_t *jrev = json_object_get(msg, "rev");
    const json_t *rec = json_object_get(msg, "record");
    int rc = SB_ERR_INVALID;
    if (type != NULL && strcmp(type, "ack") == 0) {
        const char *instance = json_string_value(json_object_get(msg, "instance"));
        if (instance != NULL && json_is_integer(jrev)) {
            barrier_ack(instance, json_integer_value(jrev));
            rc = SB_OK;
        }
        goto out;
    }
    if (type == NULL || op == NULL || key == NULL || !json_is_integer(jrev))
        goto out;
    long long rev = json_integer_value(jrev);
    int set = strcmp(op, "set") == 0;
    if (!set && strcmp(op, "del") != 0)
        goto out;
    if (set && !json_is_object(rec))
        goto out;
    sb_sync_table_id id;
    if (strcmp(type, "endpoint") == 0) {
        const char *ws = set ? json_string_value(json_object_get(rec, "workspace_id")) : key;
        if (ws == NULL || strcmp(ws, key) != 0)
            goto out;
        id = SB_SYNC_ENDPOINTS;
    } else if (strcmp(type, "token") == 0) {
        id = SB_SYNC_TOKENS;
    } else {
        goto out;
    }
    if (set && g_tables[id].apply_set != NULL)
        g_tables[id].apply_set(rec, rev);
    else if (!set && g_tables[id].apply_del != NULL)
        g_tables[id].apply_del(key, rev);
    *changed_rev = rev;
    rc = SB_OK;
out:
    json_decref(msg);
    return rc;
}

int sb_sync_apply_message(const char *data, size_t len)
{
    long long rev = 0;
    return apply_message(data, len, &rev);
}

/* ---- the write barrier (see sync.h) ---- */

typedef struct barrier {
    struct barrier *next;
    long long rev;
    char **pending; /* instance ids that have not acknowledged |rev| yet */
    size_t npending;
    int complete;
    struct event *ev; /* on the writer's loop: the timeout */
    sb_wake *wake;    /* on the writer's loop: rung by the sync loop on completion */
    void (*done)(void *arg);
    void *arg;
} barrier;

/* Acks are remembered per instance (the highest revision each confirmed), so an ack
 * that arrives before its writer has asked who to wait for is not lost. */
#define MAX_ACKED_INSTANCES 4096

static struct {
    pthread_mutex_t lock;
    barrier *list;
    sb_strmap *acked; /* instance id -> long long * (highest revision acknowledged) */
    char self[40];
} g_bar = {.lock = PTHREAD_MUTEX_INITIALIZER};

const char *sb_sync_instance_id(void)
{
    return g_bar.self;
}

static void free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sb_free(ids[i]);
    sb_free(ids);
}

static void free_acked(const char *key, void *value, void *arg)
{
    sb_free(value);
}

/* Caller holds g_bar.lock. */
static long long acked_rev(const char *instance)
{
    const long long *v = g_bar.acked ? sb_strmap_get(g_bar.acked, instance) : NULL;
    return v ? *v : 0;
}

/* Sync thread: |instance| has applied everything up to |rev| (pub/sub keeps order). */
static void barrier_ack(const char *instance, long long rev)
{
    pthread_mutex_lock(&g_bar.lock);
    if (g_bar.acked == NULL || sb_strmap_count(g_bar.acked) >= MAX_ACKED_INSTANCES) {
        if (g_bar.acked != NULL) {
            sb_strmap_foreach(g_bar.acked, free_acked, NULL);
            sb_strmap_free(g_bar.acked);
        }
        g_bar.acked = sb_strmap_new();
    }
    long long *v = sb_strmap_get(g_bar.acked, instance);
    if (v == NULL) {
        v = sb_malloc(sizeof(*v));
        *v = 0;
        sb_strmap_put(g_bar.acked, instance, v);
    }
    if (rev > *v)
        *v = rev;
    for (barrier *b = g_bar.list; b != NULL; b = b->next) {
        if (b->complete || b->rev > rev)
            continue;
        for (size_t i = 0; i < b->npending; i++) {
            if (strcmp(b->pending[i], instance) == 0) {
                sb_free(b->pending[i]);
                b->pending[i] = b->pending[--b->npending];
                break;
            }
        }
        if (b->npending == 0) {
            b->complete = 1;
            sb_wake_ring(b->wake); /* the writer's loop is not ours to touch */
        }
    }
    pthread_mutex_unlock(&g_bar.lock);
}

static void barrier_free(barrier *b)
{
    if (b->ev != NULL)
        event_free(b->ev);
    sb_wake_free(b->wake);
    free_ids(b->pending, b->npending);
    sb_free(b);
}

/* Frees |b|, then tells its writer the barrier is over (the callback may start another). */
static void barrier_finish(barrier *b)
{
    void (*done)(void *) = b->done;
    void *done_arg = b->arg;
    barrier_free(b);
    done(done_arg);
}

/* Writer's thread: the barrier completed (its wake rang) or timed out. Once |b| is off the
 * list the sync loop can no longer ring it, so freeing it here is safe. */
static void barrier_end(barrier *b)
{
    pthread_mutex_lock(&g_bar.lock);
    for (barrier **pp = &g_bar.list; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    pthread_mutex_unlock(&g_bar.lock);
    if (!b->complete) {
        char who[256] = "";
        for (size_t i = 0; i < b->npending && strlen(who) < sizeof(who) - 48; i++)
            snprintf(who + strlen(who), sizeof(who) - strlen(who), "%s%s", i ? ", " : "",
                     b->pending[i]);
        sb_log(SB_LOG_WARN, "sync_barrier_timeout",
               "revision %lld not confirmed within %d ms by instance(s) %s; answering anyway",
               b->rev, SB_SYNC_BARRIER_MS, who);
    }
    barrier_finish(b);
}

static void on_barrier_timeout(evutil_socket_t fd, short what, void *arg)
{
    barrier_end(arg);
}

static void on_barrier_rung(void *arg)
{
    barrier_end(arg);
}

typedef struct barrier_start {
    struct event_base *base;
    barrier *b;
} barrier_start;

/* Writer's thread: the live instances, read after the write, are who must confirm it.
 * An instance announces itself before it reports ready, so every instance that can be
 * serving traffic is in this list. */
static void on_barrier_peers(redisReply *rep, void *arg)
{
    barrier_start *st = arg;
    barrier *b = st->b;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        sb_log(SB_LOG_WARN, "sync_barrier_skipped",
               "revision %lld: cannot read the live instances (%s); answering without waiting",
               b->rev, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "Redis unavailable");
        sb_free(st);
        barrier_finish(b);
        return;
    }
    b->pending = sb_calloc(rep->elements + 1, sizeof(char *));
    pthread_mutex_lock(&g_bar.lock);
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING || strcmp(e->str, g_bar.self) == 0 ||
            acked_rev(e->str) >= b->rev)
            continue;
        b->pending[b->npending++] = sb_strndup(e->str, e->len);
    }
    if (b->npending == 0) {
        pthread_mutex_unlock(&g_bar.lock);
        sb_free(st);
        barrier_finish(b);
        return;
    }
    b->ev = sb_event_new(st->base, -1, 0, on_barrier_timeout, b);
    b->wake = sb_wake_new(st->base, on_barrier_rung, b); /* NULL (EMFILE): the timeout ends it */
    struct timeval tv = {SB_SYNC_BARRIER_MS / 1000, (SB_SYNC_BARRIER_MS % 1000) * 1000};
    event_add(b->ev, &tv);
    b->next = g_bar.list;
    g_bar.list = b;
    pthread_mutex_unlock(&g_bar.lock);
    sb_free(st);
}

/* KEYS: instances. ARGV: peer ttl ms. The instances seen within the ttl. */
static const char live_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')\n";

void sb_sync_barrier(sb_redis *r, long long rev, void (*done)(void *arg), void *arg)
{
    barrier *b = sb_calloc(1, sizeof(*b));
    b->rev = rev;
    b->done = done;
    b->arg = arg;
    barrier_start *st = sb_calloc(1, sizeof(*st));
    st->base = sb_redis_base(r);
    st->b = b;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", SB_SYNC_PEER_TTL_MS);
    const char *args[] = {SB_SYNC_INSTANCES_KEY, ttl};
    if (sb_sync_eval(r, live_lua, 1, 2, args, on_barrier_peers, st) != SB_OK)
        on_barrier_peers(NULL, st);
}

/* KEYS: instances. ARGV: self id. Announces this instance and forgets long-gone ones. */
static const char announce_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)\n"
    "return 1\n";

/* ---- the sync loop ---- */

#define SNAPSHOT_RETRY_MS 1000

static struct {
    int started;
    int stopping;
    struct event_base *base;
    sb_redis *sub;
    sb_redis *cmd;
    struct event *resync_ev;   /* periodic snapshot */
    struct event *retry_ev;    /* snapshot retry after a failure */
    struct event *announce_ev; /* every second: announce this instance, learn peers */
    int sub_up;
    unsigned sub_gen;        /* bumps every time the subscription (re)starts */
    int inflight;            /* a snapshot request is outstanding */
    int inflight_counts;     /* it was sent while subscribed ... */
    unsigned inflight_gen;   /* ... during this subscription */
    int again;               /* request another snapshot when the current one ends */
    int ready;               /* atomic: read by every worker */
    int loaded;              /* atomic: ready at least once since sb_sync_start */
    long long high;          /* highest revision seen from the current Redis history */
    long long inflight_high; /* |high| when the outstanding snapshot was sent */
    long long high_before;   /* |high| when the replicas were last rebased */
    char epoch[40];          /* SB_SYNC_EPOCH_KEY as last read ("" before) */
} g_sync;

static void set_ready(int v)
{
    if (v)
        __atomic_store_n(&g_sync.loaded, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&g_sync.ready, v, __ATOMIC_RELEASE);
}

int sb_sync_ready(void)
{
    return __atomic_load_n(&g_sync.ready, __ATOMIC_ACQUIRE);
}

int sb_sync_loaded(void)
{
    return __atomic_load_n(&g_sync.loaded, __ATOMIC_ACQUIRE);
}

static void request_snapshot(void);
static void on_announce(evutil_socket_t fd, short what, void *arg);
static void announce(int then_ready);

/* Forgets the acknowledgements remembered for the barrier. */
static void forget_acks(void)
{
    pthread_mutex_lock(&g_bar.lock);
    if (g_bar.acked != NULL) {
        sb_strmap_foreach(g_bar.acked, free_acked, NULL);
        sb_strmap_free(g_bar.acked);
        g_bar.acked = NULL;
    }
    pthread_mutex_unlock(&g_bar.lock);
}

/* Forgets every revision the replicas and the barrier hold (values stay, still served):
 * the next snapshot replaces the tables wholesale, and writers wait for every ack again.
 * For whenever Redis may not be the history the revisions came from (see sync.h). */
static void rebase(void)
{
    rebase_replicas();
    forget_acks();
    if (g_sync.high > g_sync.high_before)
        g_sync.high_before = g_sync.high;
    g_sync.high = 0;
}

static void saw_revision(long long rev)
{
    if (rev > g_sync.high)
        g_sync.high = rev;
}

static void retry_snapshot_later(void)
{
    struct timeval tv = {SNAPSHOT_RETRY_MS / 1000, (SNAPSHOT_RETRY_MS % 1000) * 1000};
    if (g_sync.retry_ev != NULL)
        evtimer_add(g_sync.retry_ev, &tv);
}

/* Turns an array reply of JSON texts into a JSON array (unreadable texts are skipped). */
static json_t *records_array(const redisReply *rep, const char *what)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        json_t *rec = e->type == REDIS_REPLY_STRING ? json_loadb(e->str, e->len, 0, NULL) : NULL;
        if (!json_is_object(rec)) {
            sb_log(SB_LOG_WARN, "sync_bad_record", "skipping an unreadable %s record", what);
            json_decref(rec);
            continue;
        }
        json_array_append_new(arr, rec);
    }
    return arr;
}

static void on_snapshot(redisReply *rep, void *arg)
{
    int counts = g_sync.inflight_counts && g_sync.inflight_gen == g_sync.sub_gen;
    g_sync.inflight = 0;
    if (g_sync.stopping)
        return;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_ARRAY || rep->element[2]->type != REDIS_REPLY_ARRAY) {
        sb_log(SB_LOG_WARN, "sync_snapshot_failed", "loading the registry snapshot failed: %s",
               rep == NULL                      ? "connection lost"
               : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                : "unexpected reply");
        retry_snapshot_later();
    } else {
        long long rev = rep->element[0]->integer;
        /* Behind what this history showed before: restored from an older dump or failed
         * over with lost writes. After a reconnect the replicas were rebased already;
         * under the same connection (a periodic snapshot), reload them now. */
        int live = rev < g_sync.inflight_high;
        long long seen = live ? g_sync.inflight_high : g_sync.high_before;
        if (rev < seen)
            sb_log(SB_LOG_WARN, "redis_rewound",
                   "Redis is at revision %lld, below revision %lld seen before (restored from "
                   "an older dump, or failed over with lost writes): %s",
                   rev, seen, live ? "reloading the replicas" : "the replicas reload from it");
        if (live) {
            rebase();
            g_sync.again = 1;
        }
        g_sync.high_before = 0;
        saw_revision(rev);
        json_t *eps = records_array(rep->element[1], "endpoint");
        json_t *toks = records_array(rep->element[2], "token");
        if (g_tables[SB_SYNC_ENDPOINTS].apply_snapshot != NULL)
            g_tables[SB_SYNC_ENDPOINTS].apply_snapshot(eps, rev);
        if (g_tables[SB_SYNC_TOKENS].apply_snapshot != NULL)
            g_tables[SB_SYNC_TOKENS].apply_snapshot(toks, rev);
        if (counts && g_sync.sub_up && !sb_sync_ready()) {
            sb_log(SB_LOG_INFO, "sync_loaded",
                   "replica loaded at revision %lld: %zu endpoint(s), %zu token(s)", rev,
                   json_array_size(eps), json_array_size(toks));
            announce(1);
        }
        json_decref(eps);
        json_decref(toks);
    }
    if (g_sync.again) {
        g_sync.again = 0;
        request_snapshot();
    }
}

static void request_snapshot(void)
{
    if (g_sync.stopping)
        return;
    if (g_sync.inflight) {
        g_sync.again = 1;
        return;
    }
    if (!sb_redis_is_up(g_sync.cmd))
        return; /* the command connection's "up" asks again */
    static const char *const keys[] = {SB_SYNC_ENDPOINTS_KEY, SB_SYNC_TOKENS_KEY, SB_SYNC_REV_KEY,
                                       SB_SYNC_EP_KEY};
    g_sync.inflight_counts = g_sync.sub_up;
    /* Every change seen before the snapshot is sent was written before it is read. */
    g_sync.inflight_high = g_sync.high;
    g_sync.inflight_gen = g_sync.sub_gen;
    if (sb_sync_eval(g_sync.cmd, snapshot_lua, 4, 4, keys, on_snapshot, NULL) == SB_OK)
        g_sync.inflight = 1;
    else
        retry_snapshot_later();
}

static void on_sub_state(sb_redis *r, int up, void *arg)
{
    g_sync.sub_up = up;
    set_ready(0);
    if (up) {
        g_sync.sub_gen++;
        /* A new connection may reach another history (restart, restore, failover): the
         * snapshot it loads is authoritative, not merged by revision. */
        rebase();
        request_snapshot();
    } else {
        sb_log(SB_LOG_WARN, "sync_down",
               "registry sync lost its subscription: replicas keep their last state");
    }
}

static void check_epoch(void);

static void on_cmd_state(sb_redis *r, int up, void *arg)
{
    if (up) {
        sb_redis_safety_check(r); /* at start and on every reconnect (SPEC §4.5) */
        check_epoch();
    }
    if (up && g_sync.sub_up && !sb_sync_ready())
        request_snapshot();
}

static void on_sync_message(const char *channel, const char *data, size_t len, void *arg)
{
    long long rev = 0;
    if (apply_message(data, len, &rev) != SB_OK) {
        sb_log(SB_LOG_WARN, "sync_bad_message", "ignoring an unreadable message on %s (%zu bytes)",
               channel, len);
        return;
    }
    if (rev == 0)
        return; /* an ack */
    saw_revision(rev);
    /* Pub/sub keeps order, so this also confirms every earlier revision. */
    char ack[96];
    snprintf(ack, sizeof(ack), "{\"type\":\"ack\",\"instance\":\"%s\",\"rev\":%lld}", g_bar.self,
             rev);
    sb_redis_command(g_sync.cmd, NULL, NULL, "PUBLISH %s %s", SB_SYNC_CHANNEL, ack);
}

/* Only a subscribed, loaded instance can acknowledge changes, so only such an instance
 * tells writers to wait for it. */
/* The instance becomes ready only once writers can see it in the instances set: from
 * then on every write waits for its acknowledgement (see sb_sync_barrier). */
static void on_announced(redisReply *rep, void *arg)
{
    unsigned gen = (unsigned)(uintptr_t)arg;
    if (gen == 0 || g_sync.stopping)
        return; /* a periodic refresh */
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        retry_snapshot_later();
        return;
    }
    if (g_sync.sub_up && gen == g_sync.sub_gen && !sb_sync_ready()) {
        set_ready(1);
        sb_log(SB_LOG_INFO, "sync_ready", "instance %s announced; registry sync ready", g_bar.self);
    }
}

/* Announces this instance; |then_ready| makes the reply turn readiness on. */
static void announce(int then_ready)
{
    const char *args[] = {SB_SYNC_INSTANCES_KEY, g_bar.self};
    uintptr_t gen = then_ready ? g_sync.sub_gen : 0;
    if (sb_sync_eval(g_sync.cmd, announce_lua, 1, 2, args, on_announced, (void *)gen) != SB_OK &&
        then_ready)
        retry_snapshot_later();
}

/* The periodic job (sb_sync_every); kept apart from g_sync, which start and stop reset. */
static struct {
    void (*fn)(sb_redis *cmd);
    int every_s;
    int ticks;
} g_job;

void sb_sync_every(int seconds, void (*fn)(sb_redis *cmd))
{
    g_job.fn = fn;
    g_job.every_s = seconds > 0 ? seconds : 1;
    g_job.ticks = 0;
}

/* KEYS: the epoch. ARGV: a fresh epoch. Returns {1 when created now, the epoch}. */
static const char epoch_lua[] = "local v = redis.call('GET', KEYS[1])\n"
                                "if v then return {0, v} end\n"
                                "redis.call('SET', KEYS[1], ARGV[1])\n"
                                "return {1, ARGV[1]}\n";

static void on_epoch(redisReply *rep, void *arg)
{
    if (g_sync.stopping || rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *epoch = rep->element[1]->str;
    if (g_sync.epoch[0] != '\0' && strcmp(g_sync.epoch, epoch) != 0) {
        sb_log(SB_LOG_WARN, "redis_epoch_changed",
               "Redis %s (epoch %s, was %s): reloading the registry and token replicas",
               rep->element[0]->integer == 1 ? "lost its data (restarted empty or flushed)"
                                             : "holds another history (restored or replaced)",
               epoch, g_sync.epoch);
        rebase();
        request_snapshot();
    }
    snprintf(g_sync.epoch, sizeof(g_sync.epoch), "%s", epoch);
}

/* Reads (or creates) the epoch: a random value that lives with the data, so a Redis
 * that lost it is noticed within a second even without a reconnect (FLUSHALL). */
static void check_epoch(void)
{
    char fresh[40];
    sb_random_token("e_", 8, fresh, sizeof(fresh));
    const char *args[] = {SB_SYNC_EPOCH_KEY, fresh};
    sb_sync_eval(g_sync.cmd, epoch_lua, 1, 2, args, on_epoch, NULL);
}

static void on_announce(evutil_socket_t fd, short what, void *arg)
{
    if (sb_redis_is_up(g_sync.cmd))
        check_epoch();
    if (g_sync.sub_up && sb_sync_ready())
        announce(0);
    if (g_job.fn != NULL && ++g_job.ticks >= g_job.every_s) {
        g_job.ticks = 0;
        if (sb_redis_is_up(g_sync.cmd))
            g_job.fn(g_sync.cmd);
    }
}

static void on_resync(evutil_socket_t fd, short what, void *arg)
{
    if (g_sync.sub_up)
        request_snapshot();
}

int sb_sync_start(struct event_base *base, const char *redis_url)
{
    char err[256];
    if (g_sync.started)
        return SB_ERR;
    if (sb_redis_url_check(redis_url, err, sizeof(err)) != SB_OK)
        return SB_ERR_INVALID;
    memset(&g_sync, 0, sizeof(g_sync));
    g_sync.started = 1;
    g_sync.base = base;
    g_sync.resync_ev = event_new(base, -1, EV_PERSIST, on_resync, NULL);
    g_sync.retry_ev = evtimer_new(base, on_resync, NULL);
    struct timeval tv = {SB_SYNC_RESYNC_S, 0};
    evtimer_add(g_sync.resync_ev, &tv);
    g_sync.announce_ev = event_new(base, -1, EV_PERSIST, on_announce, NULL);
    struct timeval second = {1, 0};
    evtimer_add(g_sync.announce_ev, &second);
    sb_random_token("i_", 8, g_bar.self, sizeof(g_bar.self));
    g_sync.cmd = sb_redis_new(base, redis_url, on_cmd_state, NULL);
    g_sync.sub = sb_redis_new(base, redis_url, on_sub_state, NULL);
    sb_redis_subscribe(g_sync.sub, SB_SYNC_CHANNEL, on_sync_message, NULL);
    return SB_OK;
}

void sb_sync_stop(void)
{
    if (!g_sync.started)
        return;
    g_sync.stopping = 1;
    set_ready(0);
    sb_redis_free(g_sync.sub);
    sb_redis_free(g_sync.cmd);
    event_free(g_sync.resync_ev);
    event_free(g_sync.retry_ev);
    event_free(g_sync.announce_ev);
    memset(&g_sync, 0, sizeof(g_sync));
    forget_acks();
}
