/*
 * redis.h — one asynchronous Redis connection on a libevent loop, that reconnects.
 *
 * Wraps hiredis' async API and its libevent adapter. The connection is (re)established
 * in the background with exponential back-off (100 ms doubling to 5 s) after every
 * loss; AUTH and SELECT from the URL are sent first. While it is down, commands fail
 * at once (SB_ERR_UNAVAILABLE) instead of queueing: a caller that needs Redis answers
 * 503 quickly rather than hanging.
 *
 * Callbacks: every accepted command's callback runs exactly once, with the reply or
 * with NULL when the connection dropped (or the object was freed) first. Callbacks
 * must not free the sb_redis they run on.
 *
 * URLs: redis://[:password@]host[:port][/db], redis://user:password@host..., and
 * unix:///path/to/redis.sock[?db=N].
 */
#ifndef SWITCHBOARD_REDIS_H
#define SWITCHBOARD_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct event_base;

typedef struct sb_redis sb_redis;

typedef void (*sb_redis_reply_fn)(redisReply *reply, void *arg);
/* Called on the loop thread when the connection becomes usable (|up| 1, after AUTH,
 * SELECT and any subscriptions) and when it is lost (|up| 0). */
typedef void (*sb_redis_state_fn)(sb_redis *r, int up, void *arg);
/* A pub/sub message on a subscribed channel. */
typedef void (*sb_redis_message_fn)(const char *channel, const char *data, size_t len, void *arg);

/* Checks a URL without connecting. SB_OK or SB_ERR_INVALID with a reason in |err|. */
int sb_redis_url_check(const char *url, char *err, size_t errlen);

/* Starts connecting to |url| on |base|. |on_state| may be NULL. Returns NULL only for an
 * unparseable URL (check it first with sb_redis_url_check). */
sb_redis *sb_redis_new(struct event_base *base, const char *url, sb_redis_state_fn on_state,
                       void *arg);

/* Makes this connection a subscriber of |channel| (now and after every reconnect).
 * A subscribed connection carries no other commands. Call before the first connect
 * completes (right after sb_redis_new). */
void sb_redis_subscribe(sb_redis *r, const char *channel, sb_redis_message_fn on_message,
                        void *arg);

/* Sends a command (printf-style, as redisAsyncCommand). Returns SB_OK when sent, and
 * |cb| (may be NULL) will run once; SB_ERR_UNAVAILABLE when not connected (|cb| never runs). */
int sb_redis_command(sb_redis *r, sb_redis_reply_fn cb, void *arg, const char *fmt, ...);
/* The same with an argument vector (binary-safe). */
int sb_redis_command_argv(sb_redis *r, sb_redis_reply_fn cb, void *arg, int argc,
                          const char **argv, const size_t *argvlen);

/* 1 while connected and ready. */
int sb_redis_is_up(const sb_redis *r);

/* Closes the connection; pending callbacks run with NULL replies. NULL is a no-op. */
void sb_redis_free(sb_redis *r);

#endif
