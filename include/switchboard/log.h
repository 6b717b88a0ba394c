/*
 * log.h — one line per event on stdout, JSON (default) or text.
 *
 * Every line carries "time", "level" and "event". Lines from different threads never
 * interleave: each is formatted whole, then written with one write(2) under a lock — at
 * once, or, on a thread with a loop attached, together with the loop turn's other lines
 * at the end of the turn.
 * Callers must never pass tokens or secrets; the log module cannot tell them apart
 * from other strings, so the rule is enforced where fields are chosen (deliver, auth).
 */
#ifndef SWITCHBOARD_LOG_H
#define SWITCHBOARD_LOG_H

#include <jansson.h>
#include <stddef.h>
#include <string.h>

typedef enum { SB_LOG_DEBUG, SB_LOG_INFO, SB_LOG_WARN, SB_LOG_ERROR } sb_log_level;

/* |json| 1 for JSON lines, 0 for text; |fd| the descriptor written to (normally 1). */
void sb_log_init(int json, int fd);

/* A free-form event with a printf-style "msg" field. */
void sb_log(sb_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A structured event. |fields| (an object, may be NULL) is stolen; its keys are added
 * after time/level/event. */
void sb_log_fields(sb_log_level level, const char *event, json_t *fields);

/* A line built field by field, without a JSON tree (the per-message lines):
 *   sb_log_line l; sb_log_begin(&l, SB_LOG_INFO, "delivery");
 *   sb_log_str(&l, "workspace", ws); sb_log_int(&l, "http_status", 200); sb_log_end(&l);
 * Keys must be constant identifiers (they are written as they are); string values may
 * be outside text (repaired to UTF-8 and escaped), NULL writes null. Every begin must be
 * matched by one end, which writes the line and releases it. Lines up to 1 KiB use no
 * heap. Keys are written in the order added; the caller keeps them unique. */
typedef struct sb_log_line {
    char *buf;
    size_t len, cap;
    char inline_buf[1024];
} sb_log_line;

void sb_log_begin(sb_log_line *l, sb_log_level level, const char *event);
/* The field writers take the key's length |klen| (= strlen(key)); the sb_log_str, _int,
 * _real and _bool wrappers below compute it, at compile time for a literal key. A
 * string's length |vlen| is strlen(value) (0 for NULL): callers that know it pass it. */
void sb_log_strn(sb_log_line *l, const char *key, size_t klen, const char *value, size_t vlen);
void sb_log_intn(sb_log_line *l, const char *key, size_t klen, long long value);
void sb_log_realn(sb_log_line *l, const char *key, size_t klen, double value); /* NaN/inf: null */
void sb_log_booln(sb_log_line *l, const char *key, size_t klen, int value);

static inline void sb_log_str(sb_log_line *l, const char *key, const char *value)
{
    sb_log_strn(l, key, strlen(key), value, value != NULL ? strlen(value) : 0);
}
static inline void sb_log_int(sb_log_line *l, const char *key, long long value)
{
    sb_log_intn(l, key, strlen(key), value);
}
static inline void sb_log_real(sb_log_line *l, const char *key, double value)
{
    sb_log_realn(l, key, strlen(key), value);
}
static inline void sb_log_bool(sb_log_line *l, const char *key, int value)
{
    sb_log_booln(l, key, strlen(key), value);
}
/* Any JSON value (borrowed; NULL writes null); strings as sb_log_str. */
void sb_log_json(sb_log_line *l, const char *key, const json_t *value);
/* Every member of the object |fields| (borrowed; NULL adds nothing), in order. */
void sb_log_members(sb_log_line *l, const json_t *fields);
void sb_log_end(sb_log_line *l);

struct event_base;

/* From now on this thread's lines wait for the end of the current turn of |base| (the
 * thread's own loop) and are written together, at most 64 KiB at a time. Call on the
 * loop's thread, before it runs; sb_log_detach_loop (same thread, before the base is
 * freed) writes what is left and goes back to writing each line at once. */
void sb_log_attach_loop(struct event_base *base);
void sb_log_detach_loop(void);

#endif
