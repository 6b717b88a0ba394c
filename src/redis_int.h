/*
 * redis_int.h — what redis.c shares with redis_cluster.c (private to the two).
 *
 * redis.c owns the single connection and the public sb_redis API; a Redis Cluster
 * "facade" sb_redis hands its commands to an sb_cluster (redis_cluster.h), which in turn
 * runs plain sb_redis connections to the nodes. These are the plain-connection entry
 * points the cluster needs: a connection to a given address with the facade's
 * credentials, an optional picker that chooses the address of every new attempt (the
 * control and subscriber connections rotate over the known nodes), sending on exactly
 * one connection without routing, and setting the facade's up/down state.
 * Threads and callbacks: as redis.h.
 */
#ifndef SWITCHBOARD_REDIS_INT_H
#define SWITCHBOARD_REDIS_INT_H

#include "switchboard/redis.h"
#include "switchboard/redis_cluster.h"

/* A parsed URL (redis_url.c). */
typedef struct redis_url {
    char *host; /* TCP: host (IPv6 without brackets); NULL for unix sockets */
    int port;
    char *path; /* unix socket path, or NULL */
    char *user; /* NULL when none */
    char *password;
    int db;
    int sentinel;    /* redis+sentinel://: host and port come from redis_sentinel.h */
    char where[300]; /* printable address for messages: "host:port" or the path */
} redis_url;

/* Parses a redis:// or unix:// URL into |u| (owned strings). SB_OK, or SB_ERR_INVALID with
 * |err| filled and |u| cleared. */
int sb_redis_url_parse(const char *s, redis_url *u, char *err, size_t errlen);
/* Parses a redis+cluster:// URL: the seeds into |seeds| (at most SB_CLUSTER_MAX_SEEDS),
 * the first seed's address and credentials into |u|. As sb_redis_url_parse. */
int sb_redis_cluster_url_parse(const char *s, redis_url *u, sb_cluster_addr *seeds, size_t *nseeds,
                               char *err, size_t errlen);
/* 1 when |url| starts with redis+cluster://. */
int sb_redis_is_cluster_url(const char *url);
/* Frees |u|'s strings (the password wiped first) and zeroes it. */
void sb_redis_url_clear(redis_url *u);

/* Chooses the address of the next connection attempt: fills |host| (NUL-terminated, at
 * most |hostlen| bytes) and |port|. Returns 0, or -1 to keep the current address. */
typedef int (*sb_redis_pick_fn)(void *arg, char *host, size_t hostlen, int *port);

/* A plain (never cluster) connection to |host|:|port| authenticating with |user| and
 * |password| (either may be NULL), with |pick| (may be NULL) consulted before every
 * attempt. Connecting starts at once. Release with sb_redis_free. */
sb_redis *sb_redis_new_plain(struct event_base *base, const char *host, int port, const char *user,
                             const char *password, sb_redis_pick_fn pick, void *pick_arg,
                             sb_redis_state_fn on_state, void *arg);

/* Sends on |r| itself (a plain connection), bypassing any routing. As sb_redis_command_argv. */
int sb_redis_plain_argv(sb_redis *r, sb_redis_reply_fn cb, void *arg, int argc, const char **argv,
                        const size_t *argvlen);

/* ---- scripts (redis_script.c) ---- */

/* Scripts with an id below this have a bit in each connection's "loaded" set. */
#define SB_REDIS_SCRIPT_IDS 128

struct sb_redis_script {
    const char *head, *mid, *body; /* the identity (see sb_redis_script_get3) */
    char *text;                    /* head + body */
    size_t len;
    char sha[41];
    int id; /* 0 .. SB_REDIS_SCRIPT_IDS - 1, or -1: always sent as EVAL */
};

/* RESP of |argc| bulk strings (no "*N" header): its length, and writing it to |out|
 * (which must hold that many bytes; returns the bytes written). |lens| NULL: strlen. */
size_t sb_redis_resp_len(int argc, const char *const *argv, const size_t *lens);
size_t sb_redis_resp_write(char *out, int argc, const char *const *argv, const size_t *lens);
/* "EVAL <text>" + |tail| (the RESP of the numkeys, keys and arguments) as one command of
 * |argc| elements in all; a new buffer (sb_free) of *|len| bytes. */
char *sb_redis_resp_eval(const sb_redis_script *s, int argc, const char *tail, size_t taillen,
                         size_t *len);
/* Writes the RESP head "*argc EVALSHA <sha>" right-aligned into the first
 * SB_REDIS_EVALSHA_HEAD_MAX bytes of |out| (where a tail written at that offset follows it)
 * and returns its length. */
#define SB_REDIS_EVALSHA_HEAD_MAX 80
size_t sb_redis_resp_evalsha_head(const sb_redis_script *s, int argc, char *out);

/* Sends |s| on |r| itself (a plain connection), by SHA when |r| has loaded it, else as
 * EVAL (see redis.h, Scripts). |argv| is the whole command whose first two elements
 * ("EVALSHA", the SHA, for routing) are replaced. As sb_redis_plain_argv. */
int sb_redis_plain_script(sb_redis *r, const sb_redis_script *s, sb_redis_reply_fn cb, void *arg,
                          int argc, const char **argv, const size_t *argvlen);

/* Sets a cluster facade's state; runs its state callback when the state changes. */
void sb_redis_facade_state(sb_redis *r, int up);

/* The "host:port" |r| is connected (or connecting) to. */
const char *sb_redis_where(const sb_redis *r);

#endif
