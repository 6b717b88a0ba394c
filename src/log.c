/*
 * log.c — JSON or text event lines (see log.h).
 *
 * A line is formatted straight into a buffer (on the stack up to 1 KiB) by the
 * sb_log_line builder: no JSON tree, no allocation in the common case. Strings from
 * outside are repaired to valid UTF-8 (utf8.h) and escaped as JSON wants; in text form
 * a string is written bare only when it holds no space, quote, backslash or control
 * character, else JSON-quoted, so outside text can never forge a line or a field. Per
 * field there is one room check for key and value together; a key's length comes from
 * log.h's inline wrappers (a constant for a literal key), and a value that is one plain
 * run is copied between its quotes at once (sb_json_quoten).
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

static void grow(sb_log_line *l, size_t more)
{
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

/* Room for |more| bytes and a NUL: one compare in the common case. */
static inline void reserve(sb_log_line *l, size_t more)
{
    if (l->len + more + 1 > l->cap)
        grow(l, more);
}

static void put(sb_log_line *l, const char *s, size_t n)
{
    reserve(l, n);
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* Outside text, quoted as JSON (repaired to valid UTF-8 first: jsontext.h). The caller
 * reserved 6 * |n| + 3 bytes (the most it can take), so it is one pass. */
static void put_quoted(sb_log_line *l, const char *s, size_t n)
{
    l->len += sb_json_quoten(l->buf + l->len, l->cap - l->len, s, n);
}

/* JSON: ,"key": — text: " key=". The caller reserved |klen| + 4 bytes. */
static void put_key(sb_log_line *l, const char *key, size_t klen)
{
    char *o = l->buf + l->len;
    if (log_json) {
        o[0] = ',';
        o[1] = '"';
        memcpy(o + 2, key, klen);
        o[klen + 2] = '"';
        o[klen + 3] = ':';
        l->len += klen + 4;
    } else {
        o[0] = ' ';
        memcpy(o + 1, key, klen);
        o[klen + 1] = '=';
        l->len += klen + 2;
    }
}

/* 1 when the |n| bytes at |s| can stand unquoted in a text line: not empty, no space,
 * quote, backslash or control character. */
static int needs_no_quotes(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == '"' || s[i] == '\\' || s[i] == 0x7f)
            return 0;
    return 1;
}

void sb_log_begin(sb_log_line *l, sb_log_level level, const char *event)
{
    char ts[32];
    sb_format_iso8601(sb_chain_wall_ms(), ts);
    size_t tlen = strlen(ts), elen = strlen(event);
    const char *lv = level_name(level);
    l->buf = l->inline_buf;
    l->cap = sizeof(l->inline_buf);
    l->len = 0;
    reserve(l, tlen + 40 + 6 * elen);
    if (log_json) {
        put(l, "{\"time\":\"", 9);
        put(l, ts, tlen);
        put(l, "\",\"level\":\"", 11);
        put(l, lv, strlen(lv));
        put(l, "\",\"event\":", 10);
        put_quoted(l, event, elen);
    } else {
        put(l, ts, tlen);
        put(l, " ", 1);
        put(l, lv, strlen(lv));
        put(l, " ", 1);
        put(l, event, elen);
    }
}

void sb_log_strn(sb_log_line *l, const char *key, size_t klen, const char *value, size_t vlen)
{
    reserve(l, klen + 4 + 6 * vlen + 3);
    put_key(l, key, klen);
    if (value == NULL)
        put(l, "null", 4);
    else if (!log_json && needs_no_quotes(value, vlen) && sb_utf8_valid(value, vlen))
        put(l, value, vlen);
    else
        put_quoted(l, value, vlen);
}

void sb_log_intn(sb_log_line *l, const char *key, size_t klen, long long value)
{
    reserve(l, klen + 4 + 24);
    put_key(l, key, klen);
    l->len += sb_fmt_ll(l->buf + l->len, value);
}

void sb_log_realn(sb_log_line *l, const char *key, size_t klen, double value)
{
    reserve(l, klen + 4 + 40);
    put_key(l, key, klen);
    l->len += sb_json_real(l->buf + l->len, value);
}

void sb_log_booln(sb_log_line *l, const char *key, size_t klen, int value)
{
    reserve(l, klen + 4 + 5);
    put_key(l, key, klen);
    put(l, value ? "true" : "false", value ? 4 : 5);
}

void sb_log_json(sb_log_line *l, const char *key, const json_t *value)
{
    size_t klen = strlen(key);
    if (json_is_string(value)) {
        const char *v = json_string_value(value);
        sb_log_strn(l, key, klen, v, strlen(v)); /* cut at a NUL, as always */
        return;
    }
    reserve(l, klen + 4 + 64);
    put_key(l, key, klen);
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
    reserve(l, 2);
    if (log_json)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
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
