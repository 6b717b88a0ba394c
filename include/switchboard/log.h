/*
 * log.h — one line per event on stdout, JSON (default) or text.
 *
 * Every line carries "time", "level" and "event". Lines from different threads never
 * interleave: each is formatted whole, then written with one write(2) under a lock.
 * Callers must never pass tokens or secrets; the log module cannot tell them apart
 * from other strings, so the rule is enforced where fields are chosen (deliver, auth).
 */
#ifndef SWITCHBOARD_LOG_H
#define SWITCHBOARD_LOG_H

#include <jansson.h>

typedef enum { SB_LOG_DEBUG, SB_LOG_INFO, SB_LOG_WARN, SB_LOG_ERROR } sb_log_level;

/* |json| 1 for JSON lines, 0 for text; |fd| the descriptor written to (normally 1). */
void sb_log_init(int json, int fd);

/* A free-form event with a printf-style "msg" field. */
void sb_log(sb_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A structured event. |fields| (an object, may be NULL) is stolen; its keys are added
 * after time/level/event. */
void sb_log_fields(sb_log_level level, const char *event, json_t *fields);

#endif
