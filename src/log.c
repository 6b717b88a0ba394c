/*
 * log.c — JSON or text event lines (see log.h).
 *
 * A line is formatted straight into a buffer (on the stack up to 1 KiB) by the
 * sb_log_line builder: no JSON tree, no allocation in the common case. Strings from
 * outside are repaired to valid UTF-8 (utf8.h) and escaped as JSON wants; in text form
 * a string is written bare only when it holds no space, quote, backslash or control
 * character, else JSON-quoted, so outside text can never forge a line or a field.
 *
 * A thread with a loop attached (sb_log_attach_loop: the workers) keeps its lines until
 * the end of the loop turn and writes them with one write(2): under load that is one
 * syscall for many requests instead of one each. Other threads write each line at once.
 * Only the write is serialized (one lock), so lines of different threads never
 * interleave and a slow formatter in one thread never stalls another.
 */
#include "switchboard/log.h"
#include "switchboard/alloc.h"
#include "switchboard/jsontext.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
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

/* ---- lines held until the end of the loop turn (threads with a loop attached) ---- */

#define HELD_MAX (64 * 1024) /* written at once past this */

static __thread struct {
    char *buf;
    size_t len, cap;
    struct event *flush; /* NULL: this thread writes each line at once */
    int armed;
} held;

static void flush_held(void)
{
    if (held.len > 0)
        write_line(held.buf, held.len);
    held.len = 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    held.armed = 0;
    flush_held();
}

void sb_log_attach_loop(struct event_base *base)
{
    held.flush = sb_event_new(base, -1, 0, on_flush, NULL);
}

void sb_log_detach_loop(void)
{
    flush_held();
    if (held.flush != NULL)
        event_free(held.flush);
    sb_free(held.buf);
    memset(&held, 0, sizeof(held));
}

static void emit(const char *line, size_t len)
{
    if (held.flush == NULL) {
        write_line(line, len);
        return;
    }
    if (held.len + len > held.cap) {
        held.cap = (held.len + len) * 2 < 4096 ? 4096 : (held.len + len) * 2;
        held.buf = sb_realloc(held.buf, held.cap);
    }
    memcpy(held.buf + held.len, line, len);
    held.len += len;
    if (held.len >= HELD_MAX) {
        flush_held();
    } else if (!held.armed) {
        held.armed = 1;
        event_active(held.flush, 0, 1); /* runs after this turn's other callbacks */
    }
}

/* ---- building a line ---- */

static void reserve(sb_log_line *l, size_t more)
{
    if (l->len + more + 1 <= l->cap)
        return;
    size_t cap = (l->len + more + 1) * 2;
    if (l->buf == l->inline_buf) {
        char *b = sb_malloc(cap);
        memcpy(b, l->buf, l->len);
        l->buf = b;
    } else {
        l->buf = sb_realloc(l->buf, cap);
    }
    l->cap = cap;
}

static void put(sb_log_line *l, const char *s, size_t n)
{
    reserve(l, n);
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(sb_log_line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Outside text, quoted as JSON (repaired to valid UTF-8 first: jsontext.h). */
static void put_quoted(sb_log_line *l, const char *s)
{
    size_t n = strlen(s);
    reserve(l, 6 * n + 3); /* the most it can take: one pass (jsontext.h) */
    l->len += sb_json_quoten(l->buf + l->len, l->cap - l->len, s, n);
}

/* Text form: " key=" (JSON: ,"key":). */
static void put_key(sb_log_line *l, const char *key)
{
    if (log_json) {
        put(l, ",\"", 2);
        puts_(l, key);
        put(l, "\":", 2);
    } else {
        put(l, " ", 1);
        puts_(l, key);
        put(l, "=", 1);
    }
}

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

void sb_log_begin(sb_log_line *l, sb_log_level level, const char *event)
{
    char ts[32];
    sb_format_iso8601(sb_chain_wall_ms(), ts);
    l->buf = l->inline_buf;
    l->cap = sizeof(l->inline_buf);
    l->len = 0;
    if (log_json) {
        put(l, "{\"time\":\"", 9);
        puts_(l, ts);
        put(l, "\",\"level\":\"", 11);
        puts_(l, level_name(level));
        put(l, "\",\"event\":", 10);
        put_quoted(l, event);
    } else {
        puts_(l, ts);
        put(l, " ", 1);
        puts_(l, level_name(level));
        put(l, " ", 1);
        puts_(l, event);
    }
}

void sb_log_str(sb_log_line *l, const char *key, const char *value)
{
    put_key(l, key);
    if (value == NULL)
        put(l, "null", 4);
    else if (!log_json && needs_no_quotes(value) && sb_utf8_valid(value, strlen(value)))
        puts_(l, value);
    else
        put_quoted(l, value);
}

void sb_log_int(sb_log_line *l, const char *key, long long value)
{
    char num[24];
    put_key(l, key);
    put(l, num, sb_fmt_ll(num, value));
}

void sb_log_real(sb_log_line *l, const char *key, double value)
{
    char num[40];
    put_key(l, key);
    put(l, num, sb_json_real(num, value));
}

void sb_log_bool(sb_log_line *l, const char *key, int value)
{
    put_key(l, key);
    puts_(l, value ? "true" : "false");
}

void sb_log_json(sb_log_line *l, const char *key, const json_t *value)
{
    if (json_is_string(value)) {
        sb_log_str(l, key, json_string_value(value));
        return;
    }
    put_key(l, key);
    reserve(l, 64);
    sb_jbuf b = {l->buf + l->len, 0, l->cap - l->len, 0}; /* straight into the line */
    sb_json_write(&b, value);
    if (b.heap) { /* it outgrew the line's buffer: append the copy */
        put(l, b.p, b.len);
        sb_free(b.p);
    } else {
        l->len += b.len;
    }
}

void sb_log_end(sb_log_line *l)
{
    if (log_json)
        put(l, "}", 1);
    put(l, "\n", 1);
    emit(l->buf, l->len);
    if (l->buf != l->inline_buf)
        sb_free(l->buf);
    l->buf = NULL;
}

void sb_log_members(sb_log_line *l, const json_t *fields)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)(uintptr_t)fields, key, value)
    {
        sb_log_json(l, key, value);
    }
}

void sb_log_fields(sb_log_level level, const char *event, json_t *fields)
{
    sb_log_line l;
    sb_log_begin(&l, level, event);
    sb_log_members(&l, fields);
    sb_log_end(&l);
    json_decref(fields);
}

void sb_log(sb_log_level level, const char *event, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sb_log_line l;
    sb_log_begin(&l, level, event);
    sb_log_str(&l, "msg", msg);
    sb_log_end(&l);
}
