/*
 * refusal.c — refused registrations: the log line and the per-workspace list (see
 * refusal.h).
 *
 * Writing is one script (by SHA) on one key (LPUSH, LTRIM, EXPIRE), fire-and-forget like the
 * delivery notes: a refusal is already answered when it is noted, and losing the note
 * while Redis is away costs only the view's hint (the log line is always written).
 * Reading is one LRANGE. Stored facts are JSON text written by this module; a member
 * that does not parse is skipped, never shown.
 *
 * Never: store or log the token, its digest or the request body.
 */
#include "switchboard/refusal.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <string.h>

#define KEY_FMT "sb:{%s}:refused"

/* KEYS[1] the list; ARGV: fact JSON, how many to keep, TTL seconds. */
static const char note_lua[] = "redis.call('LPUSH', KEYS[1], ARGV[1])\n"
                               "redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)\n"
                               "redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))\n"
                               "return 1\n";

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *fact_json(const sb_refusal *f)
{
    json_t *o = json_object();
    json_object_set_new(o, "at", sb_json_iso8601(f->at_ms));
    json_object_set_new(o, "route", str_or_null(f->route));
    json_object_set_new(o, "status", json_integer(f->status));
    json_object_set_new(o, "code", str_or_null(f->code));
    json_object_set_new(o, "message", str_or_null(f->message));
    json_object_set_new(o, "token_workspace", str_or_null(f->token_workspace));
    json_object_set_new(o, "token_id", str_or_null(f->token_id));
    json_object_set_new(o, "admin", json_boolean(f->admin));
    json_object_set_new(o, "peer", str_or_null(f->peer));
    return o;
}

static void on_note_reply(redisReply *rep, void *arg)
{
    (void)arg;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "refusal_note_failed", "storing a refused registration failed: %s",
               rep->str);
}

void sb_refusal_note(struct sb_redis *r, const sb_refusal *f)
{
    json_t *fact = fact_json(f);
    json_t *fields = json_deep_copy(fact);
    json_object_set_new(fields, "workspace", str_or_null(f->ws));
    sb_log_fields(SB_LOG_WARN, "registration_refused", fields);
    if (r == NULL || f->ws == NULL || !sb_valid_workspace_id(f->ws)) {
        json_decref(fact);
        return;
    }
    char *text = json_dumps(fact, JSON_COMPACT);
    json_decref(fact);
    char key[SB_WS_ID_MAX + 32], keep[16], ttl[16];
    snprintf(key, sizeof(key), KEY_FMT, f->ws);
    snprintf(keep, sizeof(keep), "%d", SB_REFUSAL_KEEP);
    snprintf(ttl, sizeof(ttl), "%d", SB_REFUSAL_TTL_S);
    const char *args[] = {key, text, keep, ttl};
    if (sb_redis_eval(r, sb_redis_script_get(NULL, note_lua), 1, 4, args, on_note_reply, NULL) !=
        SB_OK)
        sb_log(SB_LOG_INFO, "refusal_not_stored",
               "workspace %s: Redis is unreachable; the refused registration is only logged",
               f->ws);
    sb_free(text);
}

typedef struct read_call {
    sb_refusal_read_fn cb;
    void *arg;
} read_call;

static void on_read_reply(redisReply *rep, void *arg)
{
    read_call *c = arg;
    json_t *list = json_array();
    int err = SB_OK;
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type != REDIS_REPLY_ARRAY) {
        sb_log(SB_LOG_WARN, "refusal_read_failed", "reading refused registrations: %s",
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        err = SB_ERR;
    } else {
        for (size_t i = 0; i < rep->elements; i++) {
            const redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_STRING)
                continue;
            json_t *j = json_loadb(e->str, e->len, 0, NULL);
            if (json_is_object(j))
                json_array_append_new(list, j);
            else
                json_decref(j);
        }
    }
    c->cb(err, list, c->arg);
    json_decref(list);
    sb_free(c);
}

int sb_refusal_recent(struct sb_redis *r, const char *ws, sb_refusal_read_fn cb, void *arg)
{
    char key[SB_WS_ID_MAX + 32];
    snprintf(key, sizeof(key), KEY_FMT, ws);
    read_call *c = sb_calloc(1, sizeof(*c));
    c->cb = cb;
    c->arg = arg;
    char last[16];
    snprintf(last, sizeof(last), "%d", SB_REFUSAL_KEEP - 1);
    const char *argv[] = {"LRANGE", key, "0", last};
    if (sb_redis_command_argv(r, on_read_reply, c, 4, argv, NULL) != SB_OK) {
        sb_free(c);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}
