/*
 * util.c — clocks, hex, randomness, hashing, small parsers and write-first bufferevent
 * output (see util.h).
 */
#include "switchboard/util.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

uint64_t sb_now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t sb_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sb_format_iso8601(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

json_t *sb_json_iso8601(int64_t ms)
{
    char buf[32];
    if (ms <= 0)
        return json_null();
    sb_format_iso8601(ms, buf);
    return json_string(buf);
}

void sb_hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

void sb_random_bytes(unsigned char *out, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(out + got, n - got, 0);
        if (r == -1) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "switchboard: getrandom failed: %s\n", strerror(errno));
            abort();
        }
        got += (size_t)r;
    }
}

int sb_random_token(const char *prefix, size_t nbytes, char *out, size_t cap)
{
    size_t plen = strlen(prefix);
    unsigned char raw[64];
    if (nbytes > sizeof(raw) || plen + 2 * nbytes + 1 > cap)
        return SB_ERR_TOOBIG;
    sb_random_bytes(raw, nbytes);
    memcpy(out, prefix, plen);
    sb_hex_encode(raw, nbytes, out + plen);
    OPENSSL_cleanse(raw, sizeof(raw));
    return SB_OK;
}

void sb_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    sb_hex_encode(md, sizeof(md), out);
}

int sb_ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int sb_valid_workspace_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SB_WS_ID_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int sb_parse_long(const char *s, long min, long max, long *out)
{
    if (s == NULL || *s == '\0')
        return SB_ERR_INVALID;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return SB_ERR_INVALID;
    *out = v;
    return SB_OK;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

char *sb_pct_decode(const char *s, size_t n)
{
    char *out = sb_malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                sb_free(out);
                return NULL;
            }
            int a = hexval((unsigned char)s[i + 1]), b = hexval((unsigned char)s[i + 2]);
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                sb_free(out);
                return NULL;
            }
            out[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* ---- write-first bufferevents ---- */

int sb_bev_write_first(struct bufferevent *bev)
{
    if (bufferevent_getfd(bev) >= 0 && bufferevent_openssl_get_ssl(bev) == NULL) {
        bufferevent_disable(bev, EV_WRITE);
        return 1;
    }
    bufferevent_enable(bev, EV_WRITE);
    return 0;
}

long sb_bev_read(struct bufferevent *bev)
{
    char buf[SB_BEV_READ_MAX];
    ssize_t n = read(bufferevent_getfd(bev), buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return SB_BEV_READ_AGAIN;
    if (n <= 0)
        return (long)n;
    /* A socket bufferevent freezes the end of its input so that only it fills it. */
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_unfreeze(in, 0);
    int rc = evbuffer_add(in, buf, (size_t)n);
    evbuffer_freeze(in, 0);
    if (rc != 0) {
        errno = ENOMEM;
        return -1;
    }
    return (long)n;
}

void sb_bev_flush(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    int waiting = (bufferevent_get_enabled(bev) & EV_WRITE) != 0;
    if (evbuffer_get_length(out) == 0) {
        if (waiting)
            bufferevent_disable(bev, EV_WRITE); /* drained: no more wake-ups */
        return;
    }
    if (waiting)
        return; /* the socket was full: the bufferevent writes when it can */
    /* A socket bufferevent freezes the start of its output so that only it drains it;
     * this is the same write it would make, from here. */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(bev, EV_WRITE);
}
