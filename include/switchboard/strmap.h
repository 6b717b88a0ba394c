/*
 * strmap.h — a string-keyed hash map (open addressing, linear probing).
 *
 * Keys are copied and owned by the map; values are opaque pointers the caller owns
 * (the map never frees them — iterate with sb_strmap_foreach before sb_strmap_free).
 * Not thread-safe: callers that share a map across threads wrap it in their own lock.
 */
#ifndef SWITCHBOARD_STRMAP_H
#define SWITCHBOARD_STRMAP_H

#include <stddef.h>

typedef struct sb_strmap sb_strmap;

sb_strmap *sb_strmap_new(void);
/* Frees the map and its key copies; values are left to the caller. NULL is a no-op. */
void sb_strmap_free(sb_strmap *m);

/* The value stored under |key|, or NULL. */
void *sb_strmap_get(const sb_strmap *m, const char *key);
/* Stores |value| (non-NULL) under |key|; returns the value it replaced, or NULL. */
void *sb_strmap_put(sb_strmap *m, const char *key, void *value);
/* Removes |key|; returns its value, or NULL when absent. */
void *sb_strmap_remove(sb_strmap *m, const char *key);
size_t sb_strmap_count(const sb_strmap *m);

/* Calls |fn| for each entry; |fn| must not modify the map. */
void sb_strmap_foreach(const sb_strmap *m, void (*fn)(const char *key, void *value, void *arg),
                       void *arg);

#endif
