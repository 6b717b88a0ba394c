/*
 * sbctl_http.c — sbctl's HTTP client: one blocking HTTP/1.1 request per call with
 * libcurl, on a fresh connection ("Connection: close"), the whole exchange bounded by
 * --timeout. The server's answer (status, final headers, body up to MAX_RESPONSE_BYTES)
 * lands in an http_resp; a failure to get one is told on stderr in the words sbctl has
 * always used ("cannot reach switchboard at URL: connect HOST:PORT: Connection refused").
 *
 * libcurl is told exactly what to do: plain http only, HTTP/1.1, no proxy from the
 * environment (sbctl talks to the --url address, nothing else), no redirects, no
 * signals, the path sent as built.
 *
 * Never: leave the admin token in a buffer of ours after the request, or wait without a
 * bound.
 */
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/metrics.h" /* SB_VERSION */
#include "switchboard/netaddr.h"
#include "switchboard/headers.h"

#include "sbctl_int.h"

#define MAX_RESPONSE_BYTES (64u << 20)

static void strbuf_add(strbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        b->p = sb_realloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void strbuf_clear(strbuf *b)
{
    sb_free(b->p);
    memset(b, 0, sizeof(*b));
}

void resp_clear(http_resp *r)
{
    sb_headers_clear(&r->headers);
    strbuf_clear(&r->body);
}

/* libcurl hands over one header line at a time, the status line of each response
 * (interim 1xx ones too) first: only the final response's fields are kept. */
static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    http_resp *r = arg;
    size_t len = size * n;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        sb_headers_clear(&r->headers);
        return len;
    }
    const char *colon = memchr(line, ':', len);
    if (colon == NULL)
        return len; /* the blank line that ends the head */
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    sb_headers_addn(&r->headers, line, (size_t)(colon - line), v, (size_t)(end - v));
    return len;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    http_resp *r = arg;
    size_t len = size * n;
    if (r->body.n + len > MAX_RESPONSE_BYTES) {
        r->too_big = 1;
        return 0; /* libcurl stops with CURLE_WRITE_ERROR */
    }
    strbuf_add(&r->body, data, len);
    return len;
}

/* The request path: the base URL's path (a reverse-proxy prefix) joined with |path|. */
static void full_path(const cli *c, const char *path, strbuf *out)
{
    const char *base = c->url.path;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    strbuf_add(out, base, n);
    strbuf_add(out, path, strlen(path));
}

/* Appends "Name: value" to |list| for each "Name: value\r\n" line of |lines|. */
static struct curl_slist *add_lines(struct curl_slist *list, const char *lines)
{
    while (lines != NULL && *lines != '\0') {
        const char *eol = strstr(lines, "\r\n");
        size_t len = eol ? (size_t)(eol - lines) : strlen(lines);
        char *one = sb_malloc(len + 1);
        memcpy(one, lines, len);
        one[len] = '\0';
        list = curl_slist_append(list, one);
        sb_free(one);
        lines = eol ? eol + 2 : lines + len;
    }
    return list;
}

/* Frees |list|, wiping each line first: one of them may be the token. */
static void free_lines(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l != NULL; l = l->next)
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

/* Why the exchange failed, in sbctl's words. Returns 1 when the connection was never
 * made (the message then names the address rather than the request). */
static int failure_text(CURL *h, CURLcode rc, const cli *c, const http_resp *r, const char *body,
                        const char *curl_err, char *out, size_t len)
{
    long os_err = 0;
    curl_off_t connected_us = 0, sent = 0;
    curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_err);
    curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected_us);
    curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &sent);
    const char *why = curl_err[0] ? curl_err : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
        snprintf(out, len, "cannot resolve %s: %s", c->url.host, curl_easy_strerror(rc));
        return 1;
    case CURLE_COULDNT_CONNECT:
        snprintf(out, len, "connect %s:%d: %s", c->url.host, c->url.port,
                 os_err ? strerror((int)os_err) : why);
        return 1;
    case CURLE_OPERATION_TIMEDOUT:
        if (connected_us == 0) {
            snprintf(out, len, "connect %s:%d: timed out", c->url.host, c->url.port);
            return 1;
        }
        if (body != NULL && sent < (curl_off_t)strlen(body))
            snprintf(out, len, "timed out while sending the request");
        else
            snprintf(out, len, "no answer in time");
        return 0;
    case CURLE_WRITE_ERROR:
        if (r->too_big) {
            snprintf(out, len, "the answer is larger than %u MiB", MAX_RESPONSE_BYTES >> 20);
            return 0;
        }
        break;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL: /* HTTP/0.9, which sbctl does not accept */
        snprintf(out, len, "the answer is not HTTP (%s)", why);
        return 0;
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        snprintf(out, len, "the connection closed before the answer was complete");
        return 0;
    case CURLE_SEND_ERROR:
        snprintf(out, len, "send: %s", os_err ? strerror((int)os_err) : why);
        return 0;
    case CURLE_RECV_ERROR:
        snprintf(out, len, "read: %s", os_err ? strerror((int)os_err) : why);
        return 0;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
        snprintf(out, len, "TLS: %s (--cacert FILE names the CA that signed its certificate)", why);
        return 1;
    default:
        break;
    }
    snprintf(out, len, "%s", why);
    return 0;
}

int http_call(const cli *c, const char *method, const char *path, const char *body,
              const char *extra, int timeout_s, http_resp *r)
{
    memset(r, 0, sizeof(*r));
    sb_headers_init(&r->headers);
    CURL *h = curl_easy_init();
    if (h == NULL) {
        fprintf(stderr, "sbctl: cannot initialize libcurl\n");
        abort();
    }
    strbuf url = {0}, p = {0};
    full_path(c, path, &p);
    if (c->url.https)
        strbuf_add(&url, "https://", 8);
    else
        strbuf_add(&url, "http://", 7);
    strbuf_add(&url, c->url.authority, strlen(c->url.authority));
    strbuf_add(&url, p.p, p.n);

    char line[600];
    struct curl_slist *hdrs = NULL;
    snprintf(line, sizeof(line), "Host: %s", c->url.authority);
    hdrs = curl_slist_append(hdrs, line);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = curl_slist_append(hdrs, "Connection: close");
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    if (c->token != NULL) {
        size_t n = strlen(c->token) + sizeof("Authorization: Bearer ");
        char *auth = sb_malloc(n);
        snprintf(auth, n, "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, auth);
        OPENSSL_cleanse(auth, strlen(auth));
        sb_free(auth);
    }
    hdrs = add_lines(hdrs, extra);
    if (body != NULL)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (hdrs == NULL) {
        fprintf(stderr, "sbctl: out of memory\n");
        abort();
    }

    char curl_err[CURL_ERROR_SIZE] = "";
    char ua[64];
    snprintf(ua, sizeof(ua), "sbctl/%s", SB_VERSION);
    long ms = (long)timeout_s * 1000;
    curl_easy_setopt(h, CURLOPT_URL, url.p);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->cacert != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->cacert); /* peer and host are always verified */
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* ignore http_proxy and friends */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, ms);
    curl_easy_setopt(h, CURLOPT_USERAGENT, ua);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    if (body != NULL) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    else
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);

    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    r->status = (int)status;
    char err[512] = "";
    int at_connect = 0;
    if (rc != CURLE_OK)
        at_connect = failure_text(h, rc, c, r, body, curl_err, err, sizeof(err));
    curl_easy_cleanup(h);
    free_lines(hdrs);
    strbuf_clear(&url);
    strbuf_clear(&p);
    if (rc == CURLE_OK)
        return EXIT_DONE;
    if (at_connect)
        say("cannot reach switchboard at %s: %s", c->url_text, err);
    else
        say("cannot reach switchboard at %s: %s %s: %s", c->url_text, method, path, err);
    return EXIT_UNREACHABLE;
}
