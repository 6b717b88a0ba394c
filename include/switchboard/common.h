/*
 * common.h — the error idiom and small constants every module shares.
 *
 * Functions return int: 0 (SB_OK) on success, a negative SB_ERR_* on failure.
 * Constructors return NULL on failure. Nothing here allocates.
 */
#ifndef SWITCHBOARD_COMMON_H
#define SWITCHBOARD_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    SB_OK = 0,
    SB_ERR = -1,             /* generic failure */
    SB_ERR_INVALID = -2,     /* malformed input */
    SB_ERR_NOTFOUND = -3,    /* no such object */
    SB_ERR_UNAVAILABLE = -4, /* a dependency (Redis, upstream) is down */
    SB_ERR_FORBIDDEN = -5,   /* policy refuses it */
    SB_ERR_TOOBIG = -6,      /* over a configured limit */
    SB_ERR_AUTH = -7,        /* missing or unknown credentials */
};

/* Workspace ids: 1..SB_WS_ID_MAX chars of [A-Za-z0-9._-]. */
#define SB_WS_ID_MAX 128

#define SB_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A counter one thread writes and others only read (/metrics reading every worker's
 * connections, requests in flight, idle agent connections): the owner adds |d| with a
 * relaxed atomic store, a reader loads it with __atomic_load_n(&x, __ATOMIC_RELAXED).
 * No read-modify-write is needed (one writer), and neither side races in C11's terms. */
#define SB_OWNED_ADD(x, d) __atomic_store_n(&(x), (x) + (d), __ATOMIC_RELAXED)

/* A macro's value as a string literal (for constants shared with Lua scripts). */
#define SB_STR_(x) #x
#define SB_STR(x) SB_STR_(x)

#endif
