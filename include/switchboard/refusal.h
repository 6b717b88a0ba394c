/*
 * refusal.h — refused registrations, kept per workspace (SPEC §4.1).
 *
 * An agent whose register or heartbeat is refused (401 unknown token, 403 a token of
 * another workspace, 400 a bad body) keeps failing silently while its messages fall
 * back "no_endpoint"; so every refusal is logged and the last few are kept in Redis
 * under the workspace it named, for the delivery view and its verdict on every
 * instance. The facts kept: when, which route, the status, the error code and message,
 * the caller's address, and — when the token was valid — the token's own workspace and
 * token id. Never the token, never the body.
 *
 * Key (proto/redis-schema.md): sb:{ws}:refused, a LIST of JSON facts, newest first,
 * trimmed to SB_REFUSAL_KEEP, expiring SB_REFUSAL_TTL_S after the last refusal. One
 * key per script: the workspace's hash slot only.
 *
 * Threads: every function runs on the loop thread of the sb_redis it is given.
 */
#ifndef SWITCHBOARD_REFUSAL_H
#define SWITCHBOARD_REFUSAL_H

#include <jansson.h>
#include <stdint.h>

struct sb_redis;

#define SB_REFUSAL_KEEP 5
#define SB_REFUSAL_TTL_S (7 * 24 * 3600)

typedef struct sb_refusal {
    const char *ws;              /* the workspace the body named; required (valid id) */
    const char *route;           /* "register" or "heartbeat" */
    int status;                  /* 400, 401 or 403 */
    const char *code;            /* the error code answered, e.g. "forbidden" */
    const char *message;         /* the error message answered (may be NULL) */
    const char *token_workspace; /* the token's workspace when it was a valid one, else NULL */
    const char *token_id;        /* its id, else NULL */
    int admin;                   /* 1 when the admin token was used */
    const char *peer;            /* the caller's "ip:port" (may be NULL) */
    int64_t at_ms;               /* wall clock */
} sb_refusal;

/* Logs |f| (event "registration_refused", level warn) and, when |r| is up, stores it
 * under f->ws (fire-and-forget: an error reply is logged, never retried). Borrowed
 * pointers are only read during the call. A NULL or invalid f->ws is logged only. */
void sb_refusal_note(struct sb_redis *r, const sb_refusal *f);

/* Read completion: |list| (borrowed for the call) is a JSON array of the kept facts,
 * newest first, each {"at","route","status","code","message","token_workspace",
 * "token_id","admin","peer"}; [] when none. |err| SB_OK, SB_ERR_UNAVAILABLE (the
 * connection was lost) or SB_ERR (unreadable reply, logged). */
typedef void (*sb_refusal_read_fn)(int err, const json_t *list, void *arg);

/* Reads the kept refusals of |ws|. Returns SB_OK (|cb| will run once) or
 * SB_ERR_UNAVAILABLE when |r| is down (|cb| never runs). */
int sb_refusal_recent(struct sb_redis *r, const char *ws, sb_refusal_read_fn cb, void *arg);

#endif
