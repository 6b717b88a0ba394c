/*
 * redis_safety.c — reads whether the Redis behind switchboard can lose queued messages
 * (see redis_safety.h for what is read and why).
 *
 * One check is four pipelined commands on the caller's connection: CONFIG GET for
 * maxmemory-policy, appendonly and save, then INFO (all sections). The replies arrive
 * in order; a small check record counts them down and the last one (INFO) decides: a
 * CONFIG answer wins, INFO fills what CONFIG refused (maxmemory_policy, aof_enabled),
 * and what neither told stays unknown. The verdict is process-wide, behind a mutex, so
 * any worker's /readyz and /metrics read it.
 *
 * Never: fail or delay readiness because of the verdict, or log the same verdict twice
 * in a row (a flapping connection would fill the log).
 */
#include "switchboard/redis_safety.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/utf8.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define VAL_MAX 128

static struct {
    pthread_mutex_t lock;
    int checked;
    int risk;
    char policy[VAL_MAX]; /* "" = unknown */
    char persistence[VAL_MAX];
    char run_id[48];
    char replid[48];
} g_safety = {.lock = PTHREAD_MUTEX_INITIALIZER};

typedef struct check {
    int left; /* replies still to come */
    int lost; /* a reply was NULL: the connection dropped, its reconnect checks again */
    int have_policy, have_aof, have_save;
    char policy[VAL_MAX], aof[VAL_MAX], save[VAL_MAX];
    char run_id[48], replid[48];
} check;

int sb_redis_safety_eval(const char *policy, const char *appendonly, const char *save)
{
    if (policy != NULL && strcmp(policy, "noeviction") != 0)
        return SB_REDIS_RISK_EVICTION;
    int aof = appendonly != NULL && strcmp(appendonly, "yes") == 0;
    if (policy != NULL && aof)
        return SB_REDIS_RISK_NONE;
    if (appendonly == NULL || (!aof && save == NULL) || policy == NULL)
        return SB_REDIS_RISK_UNKNOWN;
    if (aof)
        return SB_REDIS_RISK_NONE;
    return save[0] != '\0' ? SB_REDIS_RISK_SNAPSHOTS : SB_REDIS_RISK_VOLATILE;
}

static const char *persistence_name(const check *c)
{
    if (!c->have_aof)
        return "unknown";
    int aof = strcmp(c->aof, "yes") == 0;
    if (!c->have_save)
        return aof ? "aof" : "unknown";
    if (aof)
        return c->save[0] != '\0' ? "aof+rdb" : "aof";
    return c->save[0] != '\0' ? "rdb" : "none";
}

static const char *risk_sentence(int risk)
{
    switch (risk) {
    case SB_REDIS_RISK_NONE:
        return NULL;
    case SB_REDIS_RISK_UNKNOWN:
        return "Redis's maxmemory-policy or persistence could not be read (CONFIG disabled?): "
               "make sure it runs with appendonly yes and maxmemory-policy noeviction";
    case SB_REDIS_RISK_SNAPSHOTS:
        return "Redis keeps RDB snapshots only: a crash loses the messages queued since the "
               "last snapshot; set appendonly yes";
    case SB_REDIS_RISK_VOLATILE:
        return "Redis has no persistence: a restart loses every queued message; set "
               "appendonly yes";
    default:
        return "Redis's maxmemory-policy can evict keys: under memory pressure queued "
               "messages are deleted; set maxmemory-policy noeviction";
    }
}

/* Copies the value of "|field|:" from an INFO text into |out|; 1 when found. */
static int info_field(const char *info, const char *field, char *out, size_t cap)
{
    size_t flen = strlen(field);
    for (const char *p = info; p != NULL && *p != '\0';) {
        if (strncmp(p, field, flen) == 0 && p[flen] == ':') {
            const char *v = p + flen + 1;
            size_t n = strcspn(v, "\r\n");
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return 0;
}

/* A CONFIG GET reply: {name, value} (an empty array for an unknown name). */
static int config_value(const redisReply *rep, char *out, size_t cap)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[1]->type != REDIS_REPLY_STRING)
        return 0;
    snprintf(out, cap, "%s", rep->element[1]->str);
    return 1;
}

static void publish(check *c)
{
    const char *policy = c->have_policy ? c->policy : NULL;
    int risk =
        sb_redis_safety_eval(policy, c->have_aof ? c->aof : NULL, c->have_save ? c->save : NULL);
    const char *pers = persistence_name(c);
    pthread_mutex_lock(&g_safety.lock);
    int changed = !g_safety.checked || g_safety.risk != risk ||
                  strcmp(g_safety.policy, policy ? policy : "") != 0 ||
                  strcmp(g_safety.persistence, pers) != 0;
    int restarted = g_safety.run_id[0] != '\0' && c->run_id[0] != '\0' &&
                    strcmp(g_safety.run_id, c->run_id) != 0;
    int new_history = g_safety.replid[0] != '\0' && c->replid[0] != '\0' &&
                      strcmp(g_safety.replid, c->replid) != 0;
    g_safety.checked = 1;
    g_safety.risk = risk;
    snprintf(g_safety.policy, sizeof(g_safety.policy), "%s", policy ? policy : "");
    snprintf(g_safety.persistence, sizeof(g_safety.persistence), "%s", pers);
    if (c->run_id[0] != '\0')
        snprintf(g_safety.run_id, sizeof(g_safety.run_id), "%s", c->run_id);
    if (c->replid[0] != '\0')
        snprintf(g_safety.replid, sizeof(g_safety.replid), "%s", c->replid);
    pthread_mutex_unlock(&g_safety.lock);
    if (restarted || new_history)
        sb_log(SB_LOG_WARN, "redis_restarted",
               "Redis is not the server seen before (%s changed: restarted, restored or failed "
               "over); the registry replicas reload from it",
               restarted ? "run_id" : "replication id");
    if (!changed)
        return;
    if (risk == SB_REDIS_RISK_NONE)
        sb_log(SB_LOG_INFO, "redis_safe",
               "Redis is safe for queues: maxmemory-policy %s, persistence %s", policy, pers);
    else
        sb_log(SB_LOG_WARN, "redis_eviction_risk",
               "%s (maxmemory-policy %s, persistence %s; switchboard_redis_eviction_risk %d)",
               risk_sentence(risk), policy ? policy : "unknown", pers, risk);
}

/* Counts one reply down; the last one publishes the verdict and frees the record. */
static void reply_done(check *c, int answered)
{
    if (!answered)
        c->lost = 1;
    if (--c->left > 0)
        return;
    if (!c->lost)
        publish(c);
    sb_free(c);
}

static void on_policy(redisReply *rep, void *arg)
{
    check *c = arg;
    c->have_policy = config_value(rep, c->policy, sizeof(c->policy));
    reply_done(c, rep != NULL);
}

static void on_aof(redisReply *rep, void *arg)
{
    check *c = arg;
    c->have_aof = config_value(rep, c->aof, sizeof(c->aof));
    reply_done(c, rep != NULL);
}

static void on_save(redisReply *rep, void *arg)
{
    check *c = arg;
    c->have_save = config_value(rep, c->save, sizeof(c->save));
    reply_done(c, rep != NULL);
}

/* The last reply of the pipeline: fills what CONFIG did not tell from INFO. */
static void on_info(redisReply *rep, void *arg)
{
    check *c = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_STRING) {
        char v[VAL_MAX];
        if (!c->have_policy && info_field(rep->str, "maxmemory_policy", v, sizeof(v))) {
            snprintf(c->policy, sizeof(c->policy), "%s", v);
            c->have_policy = 1;
        }
        if (!c->have_aof && info_field(rep->str, "aof_enabled", v, sizeof(v))) {
            snprintf(c->aof, sizeof(c->aof), "%s", strcmp(v, "1") == 0 ? "yes" : "no");
            c->have_aof = 1;
        }
        info_field(rep->str, "run_id", c->run_id, sizeof(c->run_id));
        info_field(rep->str, "master_replid", c->replid, sizeof(c->replid));
    }
    reply_done(c, rep != NULL);
}

void sb_redis_safety_check(sb_redis *r)
{
    check *c = sb_calloc(1, sizeof(*c));
    c->left = 1; /* held by this function until every command is sent */
    if (sb_redis_command(r, on_policy, c, "CONFIG GET maxmemory-policy") == SB_OK)
        c->left++;
    if (sb_redis_command(r, on_aof, c, "CONFIG GET appendonly") == SB_OK)
        c->left++;
    if (sb_redis_command(r, on_save, c, "CONFIG GET save") == SB_OK)
        c->left++;
    if (sb_redis_command(r, on_info, c, "INFO") == SB_OK)
        c->left++;
    else
        c->lost = 1; /* without INFO the verdict would be half-read: wait for a reconnect */
    reply_done(c, 1);
}

int sb_redis_safety_risk(void)
{
    pthread_mutex_lock(&g_safety.lock);
    int risk = g_safety.checked ? g_safety.risk : SB_REDIS_RISK_UNKNOWN;
    pthread_mutex_unlock(&g_safety.lock);
    return risk;
}

json_t *sb_redis_safety_json(void)
{
    pthread_mutex_lock(&g_safety.lock);
    int risk = g_safety.checked ? g_safety.risk : SB_REDIS_RISK_UNKNOWN;
    /* The policy is Redis's text: through the UTF-8 gate. */
    json_t *o = json_pack("{s:o,s:s,s:i,s:b}", "eviction_policy",
                          sb_json_text(g_safety.policy[0] ? g_safety.policy : "unknown"),
                          "persistence", g_safety.persistence[0] ? g_safety.persistence : "unknown",
                          "eviction_risk", risk, "safe_for_queues", risk == SB_REDIS_RISK_NONE);
    const char *w =
        g_safety.checked ? risk_sentence(risk) : "Redis's settings have not been read yet";
    pthread_mutex_unlock(&g_safety.lock);
    if (w != NULL)
        json_object_set_new(o, "warning", json_string(w));
    return o;
}
