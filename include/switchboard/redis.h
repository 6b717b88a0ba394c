/*
 * redis.h — one asynchronous Redis connection on a libevent loop, that reconnects.
 *
 * Wraps hiredis' async API and its libevent adapter. The connection is (re)established
 * in the background with exponential back-off (100 ms doubling to 5 s) after every
 * loss; AUTH and SELECT from the URL are sent first, then a PING (or the SUBSCRIBE of a
 * subscriber connection) whose answer makes the connection "up". The whole of TCP
 * connect + handshake is bounded by a connect timeout (hiredis 0.14 has none for async
 * connects), so a server that accepts but never answers cannot leave us "connecting".
 * While it is down, commands fail at once (SB_ERR_UNAVAILABLE) instead of queueing: a
 * caller that needs Redis answers 503 quickly rather than hanging.
 *
 * A watchdog drops a connection whose oldest outstanding command has seen no reply for
 * the command timeout (a stopped or wedged server), so no caller waits forever: their
 * callbacks run with NULL and the connection is re-established. Consequently blocking
 * commands (BLPOP, ...) longer than that timeout must not be sent on these connections.
 * TCP keep-alive is enabled to notice dead peers of idle (e.g. subscriber) connections.
 *
 * Threads: an sb_redis belongs to the loop thread of its event_base; every function but
 * sb_redis_is_up must be called on that thread. Host names are resolved with a blocking
 * getaddrinfo (hiredis 0.14 limitation): use an address or a name from /etc/hosts.
 *
 * Callbacks: every accepted command's callback runs exactly once, with the reply or
 * with NULL when the connection dropped (or the object was freed) first. Callbacks
 * must not free the sb_redis they run on. The reply is owned by hiredis and valid only
 * during the callback.
 *
 * URLs: redis://[[user:]password@]host[:port][/db] (a userinfo without ':' is the
 * password; %XX escapes are decoded), IPv6 hosts in brackets, and
 * unix:///path/to/redis.sock[?db=N][&password=P][&user=U], and
 * redis+sentinel://…/master-name (redis_sentinel.h: each connection asks that module for
 * the master's address when it connects, checks ROLE in its handshake, and is dropped as
 * soon as Sentinel names another master), or
 * redis+cluster://[[user:]password@]h1:p1[,h2:p2…][?user=U&password=P] for a Redis Cluster
 * (the seeds; the rest of the nodes come from CLUSTER SLOTS). TLS (rediss://) is not
 * supported by hiredis 0.14 and is refused. Errors never echo the password.
 *
 * A reply READONLY, MASTERDOWN or LOADING (a demoted master, a replica cut off, a
 * restart loading its data: the command did nothing) is handed to the callback as NULL,
 * like a lost connection — callers answer 503 + Retry-After, never 500 — and the
 * connection is remade (with back-off until a command succeeds again).
 *
 * Redis Cluster (redis_cluster.h): an sb_redis made from a redis+cluster:// URL is a
 * facade over one connection per master; sb_redis_command(_argv) route by the first key
 * of the command (EVAL: the first of KEYS), so every script must touch one hash slot.
 * A command for a slot whose master is down fails at once with SB_ERR_UNAVAILABLE; other
 * slots keep working. sb_redis_is_up is 1 once the slot map is loaded and a master is
 * connected.
 */
#ifndef SWITCHBOARD_REDIS_H
#define SWITCHBOARD_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct event_base;

typedef struct sb_redis sb_redis;

typedef void (*sb_redis_reply_fn)(redisReply *reply, void *arg);
/* Called on the loop thread when the connection becomes usable (|up| 1, after AUTH,
 * SELECT and any subscriptions) and when it is lost (|up| 0, only after an |up| 1).
 * Not called from sb_redis_free. */
typedef void (*sb_redis_state_fn)(sb_redis *r, int up, void *arg);
/* A pub/sub message on a subscribed channel. |data| is NUL-terminated and |len| long;
 * both are valid only during the call. */
typedef void (*sb_redis_message_fn)(const char *channel, const char *data, size_t len, void *arg);

/* Defaults of sb_redis_set_timeouts. */
#define SB_REDIS_CONNECT_TIMEOUT_MS 3000
#define SB_REDIS_COMMAND_TIMEOUT_MS 10000

/* Checks a URL without connecting. SB_OK or SB_ERR_INVALID with a reason in |err|. */
int sb_redis_url_check(const char *url, char *err, size_t errlen);

/* Connects to |url| synchronously (start-up check): connect, AUTH, SELECT and PING, each
 * bounded by |timeout_ms|. Returns SB_OK, SB_ERR_INVALID for a bad URL, or
 * SB_ERR_UNAVAILABLE, with one line in |err| naming the address (never the password). */
int sb_redis_ping_sync(const char *url, int timeout_ms, char *err, size_t errlen);

/* sb_redis_ping_sync that also tells a Redis Cluster: a redis:// URL of a node whose
 * INFO says cluster_enabled:1 comes back in *|resolved| as redis+cluster://… with the same
 * address and credentials; any other URL comes back unchanged; a redis+cluster:// URL
 * is checked by pinging its seeds until one answers. *|resolved| is NULL unless SB_OK
 * (free it with sb_free). A cluster reached with a database other than 0 is refused. */
int sb_redis_resolve_sync(const char *url, int timeout_ms, char **resolved, char *err,
                          size_t errlen);

/* Runs |script| (EVAL with no keys) on a single Redis at |url|, synchronously, bounded by
 * |timeout_ms| per step (start-up maintenance such as a key layout migration). SB_OK with
 * its integer reply in *|result|; SB_ERR_INVALID for a bad or redis+cluster:// URL;
 * SB_ERR_UNAVAILABLE when Redis does not answer; SB_ERR when the script failed. */
int sb_redis_eval_sync(const char *url, int timeout_ms, const char *script, long long *result,
                       char *err, size_t errlen);

/* GET |key| on a single Redis at |url|, synchronously (start-up checks): SB_OK with the
 * value in |out| ("" when missing; truncated to |outlen|), else as sb_redis_eval_sync. */
int sb_redis_get_sync(const char *url, int timeout_ms, const char *key, char *out, size_t outlen,
                      char *err, size_t errlen);

/* Starts connecting to |url| on |base| (the first attempt begins at once). |on_state| may
 * be NULL. Returns NULL only for an unparseable URL (check it first with
 * sb_redis_url_check). Release with sb_redis_free. */
sb_redis *sb_redis_new(struct event_base *base, const char *url, sb_redis_state_fn on_state,
                       void *arg);

/* Sets the bound on connect + handshake (|connect_ms|; an attempt under way is re-armed
 * with it from now) and on the wait for a reply while commands are outstanding
 * (|command_ms|, from the next watchdog check). Values <= 0 keep the current setting. */
void sb_redis_set_timeouts(sb_redis *r, int connect_ms, int command_ms);

/* Makes this connection a subscriber of |channel| (now and after every reconnect).
 * A subscribed connection carries no other commands (sb_redis_command then fails with
 * SB_ERR_INVALID). Call right after sb_redis_new, before the loop runs. */
void sb_redis_subscribe(sb_redis *r, const char *channel, sb_redis_message_fn on_message,
                        void *arg);

/* Sends a command (printf-style, as redisAsyncCommand, with %s and %b). Returns SB_OK when
 * sent, and |cb| (may be NULL) will run once, later, from the loop; SB_ERR_UNAVAILABLE
 * when not connected (|cb| never runs). */
int sb_redis_command(sb_redis *r, sb_redis_reply_fn cb, void *arg, const char *fmt, ...);
/* The same with an argument vector (binary-safe; |argvlen| NULL means strlen). */
int sb_redis_command_argv(sb_redis *r, sb_redis_reply_fn cb, void *arg, int argc, const char **argv,
                          const size_t *argvlen);

/* ---- Scripts ----
 *
 * A Lua script is named by two static texts, |head| (a shared prelude, may be NULL) and
 * |body|, whose concatenation is the script: both must live, unchanged, as long as the
 * program (string literals or static arrays), since the pair of pointers is the script's
 * identity. sb_redis_eval sends it by SHA: on each connection (each node's, on a Redis
 * Cluster) the first use of a script is an EVAL, which also caches it in that server,
 * and every later use an EVALSHA, until the connection is remade. An EVALSHA answered
 * NOSCRIPT (SCRIPT FLUSH, a server that lost its cache without dropping the connection)
 * did nothing: it is sent again as EVAL, from its reply, and only that second reply
 * reaches |cb|. Commands of one connection run in the order sent; a NOSCRIPT resend runs
 * after whatever was sent while its first reply was on its way (redis.c says why that
 * keeps every caller's order). */
typedef struct sb_redis_script sb_redis_script;

/* The script |head| + |body| (see above), made on its first use (its text copied, its SHA1
 * computed) and found again without copying or hashing after. Thread-safe; never NULL;
 * valid for the life of the process. */
const sb_redis_script *sb_redis_script_get(const char *head, const char *body);
/* The same for |head| + |mid| + |body| (|mid| may be NULL too): a caller's library of Lua
 * functions between a shared prelude and a body. The three pointers name the script. */
const sb_redis_script *sb_redis_script_get3(const char *head, const char *mid, const char *body);
/* Its SHA1 in hex (40 characters), as SCRIPT LOAD would answer. */
const char *sb_redis_script_sha(const sb_redis_script *s);

/* Runs |s| with |nkeys| keys then the other arguments, |nargs| strings in all in |args|
 * (a cluster routes by the first key). As sb_redis_command: SB_OK and |cb| (may be NULL)
 * runs once with the script's reply (or NULL), or SB_ERR_UNAVAILABLE / SB_ERR_INVALID
 * and |cb| never runs. */
int sb_redis_eval(sb_redis *r, const sb_redis_script *s, int nkeys, int nargs,
                  const char *const *args, sb_redis_reply_fn cb, void *arg);

/* The loop |r| runs on. */
struct event_base *sb_redis_base(const sb_redis *r);

/* 1 while connected and ready. Safe to call from any thread (a relaxed atomic read). */
int sb_redis_is_up(const sb_redis *r);

/* Connections established so far (test and metrics hook). */
unsigned long sb_redis_connects(const sb_redis *r);

/* Closes the connection; pending callbacks run with NULL replies before this returns.
 * NULL is a no-op. Must not be called from a callback of |r|. */
void sb_redis_free(sb_redis *r);

#endif
