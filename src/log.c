/*
 * log.c — JSON or text event lines (see log.h).
 *
 * Formatting happens outside the lock; only the write is serialized, so a slow
 * formatter in one thread never stalls another's logging for long.
 */
#include "switchboard/log.h"
#include "switchboard/alloc.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int log_json = 1;
static int log_fd = 1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_name(sb_log_level level)
{
    switch (level) {
    case SB_LOG_DEBUG:
        return "debug";
    case SB_LOG_INFO:
        return "info";
    case SB_LOG_WARN:
        return "warn";
    default:
        return "error";
    }
}

void sb_log_init(int json, int fd)
{
    log_json = json;
    log_fd = fd;
}

static void write_line(const char *line, size_t len)
{
    pthread_mutex_lock(&log_lock);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(log_fd, line + off, len - off);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            break; /* nowhere left to report a logging failure */
        }
        off += (size_t)n;
    }
    pthread_mutex_unlock(&log_lock);
}

/* Text form: "TIME LEVEL EVENT key=value ..." with strings quoted when they hold spaces. */
/* 1 when |s| can stand unquoted in a text line: not empty, no space, quote, backslash or
 * control character. */
static int needs_no_quotes(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || *s == '"' || *s == '\\' || *s == 0x7f)
            return 0;
    return 1;
}

static char *format_text(const char *ts, const char *level, const char *event, json_t *fields)
{
    size_t cap = 256, len = 0;
    char *buf = sb_malloc(cap);
    len = (size_t)snprintf(buf, cap, "%s %s %s", ts, level, event);
    const char *key;
    json_t *value;
    json_object_foreach(fields, key, value)
    {
        /* A string that needs quoting is written JSON-quoted, escapes included: outside
         * text holding a newline or a quote must not forge a line or a field. */
        int bare = json_is_string(value) && needs_no_quotes(json_string_value(value));
        char *v = bare ? sb_strdup(json_string_value(value))
                       : json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
        if (v == NULL)
            continue;
        size_t need = len + strlen(key) + strlen(v) + 5;
        if (need > cap) {
            cap = need * 2;
            buf = sb_realloc(buf, cap);
        }
        len += (size_t)snprintf(buf + len, cap - len, " %s=%s", key, v);
        if (bare)
            sb_free(v);
        else
            free(v);
    }
    buf = sb_realloc(buf, len + 2);
    buf[len++] = '\n';
    buf[len] = '\0';
    return buf;
}

void sb_log_fields(sb_log_level level, const char *event, json_t *fields)
{
    char ts[32];
    sb_format_iso8601(sb_now_wall_ms(), ts);
    if (fields == NULL)
        fields = json_object();
    if (log_json) {
        json_t *line = json_object();
        json_object_set_new(line, "time", json_string(ts));
        json_object_set_new(line, "level", json_string(level_name(level)));
        json_object_set_new(line, "event", json_string(event));
        json_object_update(line, fields);
        char *s = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(10));
        json_decref(line);
        if (s != NULL) {
            size_t n = strlen(s);
            char *out = sb_malloc(n + 2);
            memcpy(out, s, n);
            out[n] = '\n';
            out[n + 1] = '\0';
            free(s);
            write_line(out, n + 1);
            sb_free(out);
        }
    } else {
        char *s = format_text(ts, level_name(level), event, fields);
        write_line(s, strlen(s));
        sb_free(s);
    }
    json_decref(fields);
}

void sb_log(sb_log_level level, const char *event, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *fields = json_object();
    json_object_set_new(fields, "msg", sb_json_text(msg));
    sb_log_fields(level, event, fields);
}
