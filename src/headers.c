/*
 * headers.c — ordered HTTP header lists and status phrases (see headers.h).
 *
 * Role: the one header container every layer shares — codecs fill it from the wire,
 * handlers add response headers, the agent client sends and receives it. Names and values
 * are copied back to back into text chunks of at least TEXT_CHUNK bytes that never move;
 * the first chunk also holds the first FIRST_ITEMS items, so a typical list costs one
 * allocation whatever its length (a pushed message builds four or five lists).
 * Never: keep a pointer to an item across a call that may grow the list (the items
 * array may move; the strings do not).
 */
#include "switchboard/headers.h"
#include "switchboard/alloc.h"

#include <string.h>
#include <strings.h>

#define TEXT_CHUNK 1024
#define FIRST_ITEMS 16
/* The first chunk, items included: at most 1,024 bytes, so it stays within glibc's
 * per-thread cache (blocks up to 1,032 bytes); 760 bytes of text hold a usual list. */
#define FIRST_CHUNK 1024

void sb_headers_init(sb_headers *h)
{
    memset(h, 0, sizeof(*h));
}

void sb_headers_clear(sb_headers *h)
{
    char *chunk = h->text;
    while (chunk != NULL) {
        char *prev;
        memcpy(&prev, chunk, sizeof(prev));
        sb_free(chunk);
        chunk = prev;
    }
    if (!h->items_inline)
        sb_free(h->items);
    sb_headers_init(h);
}

/* |n| bytes of text space that stay where they are until sb_headers_clear. */
static char *text_space(sb_headers *h, size_t n)
{
    if (h->text == NULL || h->text_used + n > h->text_cap) {
        size_t cap = sizeof(char *) + (n > TEXT_CHUNK ? n : TEXT_CHUNK);
        char *chunk = sb_malloc(cap);
        memcpy(chunk, &h->text, sizeof(char *));
        h->text = chunk;
        h->text_used = sizeof(char *);
        h->text_cap = cap;
    }
    char *p = h->text + h->text_used;
    h->text_used += n;
    return p;
}

void sb_headers_addn(sb_headers *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (h->cap == 0 && h->text == NULL) { /* the first chunk, with room for the items */
        size_t head = sizeof(char *) + FIRST_ITEMS * sizeof(sb_header);
        char *chunk = sb_malloc(FIRST_CHUNK);
        memcpy(chunk, &h->text, sizeof(char *)); /* no chunk before it (NULL) */
        h->text = chunk;
        h->text_used = head;
        h->text_cap = FIRST_CHUNK;
        h->items = (sb_header *)(void *)(chunk + sizeof(char *));
        h->cap = FIRST_ITEMS;
        h->items_inline = 1;
    } else if (h->count == h->cap) {
        h->cap = h->cap ? h->cap * 2 : FIRST_ITEMS;
        if (h->items_inline) { /* outgrew the first chunk: the items move out */
            sb_header *items = sb_malloc(h->cap * sizeof(*h->items));
            memcpy(items, h->items, h->count * sizeof(*h->items));
            h->items = items;
            h->items_inline = 0;
        } else {
            h->items = sb_realloc(h->items, h->cap * sizeof(*h->items));
        }
    }
    char *block = text_space(h, nlen + vlen + 2);
    memcpy(block, name, nlen);
    block[nlen] = '\0';
    memcpy(block + nlen + 1, value, vlen);
    block[nlen + 1 + vlen] = '\0';
    h->items[h->count].name = block;
    h->items[h->count].value = block + nlen + 1;
    h->count++;
}

void sb_headers_add(sb_headers *h, const char *name, const char *value)
{
    sb_headers_addn(h, name, strlen(name), value, strlen(value));
}

const char *sb_headers_get(const sb_headers *h, const char *name)
{
    if (h == NULL)
        return NULL;
    /* The first letters, case folded, rule out most names without a call (a list is
     * searched a few dozen times per pushed message). */
    unsigned char first = (unsigned char)name[0] | 0x20;
    for (size_t i = 0; i < h->count; i++) {
        if (((unsigned char)h->items[i].name[0] | 0x20) == first &&
            strcasecmp(h->items[i].name, name) == 0)
            return h->items[i].value;
    }
    return NULL;
}

unsigned sb_headers_reserved(const char *name, size_t len)
{
#define IS(lit) (strncasecmp(name, (lit), len) == 0)
    switch (len) {
    case 2:
        return IS("te") ? SB_HDR_HOP : 0;
    case 4:
        return IS("date") ? SB_HDR_DATE : IS("host") ? SB_HDR_HOST : 0;
    case 7:
        return IS("upgrade") || IS("trailer") ? SB_HDR_HOP : 0;
    case 10:
        return IS("connection") || IS("keep-alive") ? SB_HDR_HOP : 0;
    case 14:
        return IS("content-length") ? SB_HDR_HOP : 0;
    case 16:
        return IS("proxy-connection") ? SB_HDR_HOP : 0;
    case 17:
        return IS("transfer-encoding") ? SB_HDR_HOP : 0;
    default:
        return 0;
    }
#undef IS
}

const char *sb_http_reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Entity";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}
