/*
 * strmap.c — open-addressing string map with tombstones (see strmap.h).
 *
 * The table grows at 70% load (counting tombstones), so probes stay short; removal
 * leaves a tombstone that a later rehash sweeps away.
 */
#include "switchboard/strmap.h"
#include "switchboard/alloc.h"
#include "switchboard/util.h"

#include <stdint.h>
#include <string.h>

typedef struct {
    char *key; /* NULL: empty; TOMBSTONE: removed */
    void *value;
    uint64_t hash;
} slot;

struct sb_strmap {
    slot *slots;
    size_t cap; /* power of two */
    size_t count;
    size_t used; /* count + tombstones */
};

static char tombstone_marker;
#define TOMBSTONE (&tombstone_marker)

static uint64_t hash_str(const char *s)
{
    return sb_fnv1a(s, strlen(s));
}

sb_strmap *sb_strmap_new(void)
{
    sb_strmap *m = sb_calloc(1, sizeof(*m));
    m->cap = 16;
    m->slots = sb_calloc(m->cap, sizeof(slot));
    return m;
}

void sb_strmap_free(sb_strmap *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
            sb_free(m->slots[i].key);
    sb_free(m->slots);
    sb_free(m);
}

static slot *find(const sb_strmap *m, const char *key, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->key != TOMBSTONE && s->hash == h && strcmp(s->key, key) == 0)
            return s;
    }
}

static void grow(sb_strmap *m)
{
    slot *old = m->slots;
    size_t oldcap = m->cap;
    if (m->count * 2 >= m->cap)
        m->cap *= 2;
    m->slots = sb_calloc(m->cap, sizeof(slot));
    m->used = m->count;
    size_t mask = m->cap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (old[i].key == NULL || old[i].key == TOMBSTONE)
            continue;
        size_t j = old[i].hash & mask;
        while (m->slots[j].key != NULL)
            j = (j + 1) & mask;
        m->slots[j] = old[i];
    }
    sb_free(old);
}

void *sb_strmap_get(const sb_strmap *m, const char *key)
{
    slot *s = find(m, key, hash_str(key));
    return s ? s->value : NULL;
}

void *sb_strmap_put(sb_strmap *m, const char *key, void *value)
{
    uint64_t h = hash_str(key);
    slot *s = find(m, key, h);
    if (s != NULL) {
        void *prev = s->value;
        s->value = value;
        return prev;
    }
    if ((m->used + 1) * 10 > m->cap * 7)
        grow(m);
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    while (m->slots[i].key != NULL && m->slots[i].key != TOMBSTONE)
        i = (i + 1) & mask;
    if (m->slots[i].key == NULL)
        m->used++;
    m->slots[i].key = sb_strdup(key);
    m->slots[i].value = value;
    m->slots[i].hash = h;
    m->count++;
    return NULL;
}

void *sb_strmap_remove(sb_strmap *m, const char *key)
{
    slot *s = find(m, key, hash_str(key));
    if (s == NULL)
        return NULL;
    void *prev = s->value;
    sb_free(s->key);
    s->key = TOMBSTONE;
    s->value = NULL;
    m->count--;
    return prev;
}

size_t sb_strmap_count(const sb_strmap *m)
{
    return m->count;
}

void sb_strmap_foreach(const sb_strmap *m, void (*fn)(const char *key, void *value, void *arg),
                       void *arg)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
            fn(m->slots[i].key, m->slots[i].value, arg);
}
