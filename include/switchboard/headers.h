/*
 * headers.h — HTTP vocabulary every layer shares: ordered header lists (names compared
 * case-insensitively) and status reason phrases.
 *
 * Ground floor: used by the codecs (request side), the handlers (response side) and the
 * agent client (upstream), so it depends on nothing of ours but alloc. Order is kept as
 * added; duplicates are kept (sb_headers_get answers the first).
 */
#ifndef SWITCHBOARD_HEADERS_H
#define SWITCHBOARD_HEADERS_H

#include <stddef.h>

/* An entry is created only by sb_headers_add/addn: |name| and |value| live in the list's
 * text chunks (a few per list, never moved), so never replace or free them
 * individually. A list built by hand (items only, text NULL) borrows its strings. */
typedef struct sb_header {
    char *name;
    char *value;
} sb_header;

typedef struct sb_headers {
    sb_header *items;
    size_t count;
    size_t cap;
    char *text; /* the newest text chunk; each begins with a pointer to the one before */
    size_t text_used, text_cap;
    int items_inline; /* |items| lies in the first text chunk (not freed on its own) */
} sb_headers;

void sb_headers_init(sb_headers *h);
/* Frees every name and value; |h| is empty and reusable afterwards. */
void sb_headers_clear(sb_headers *h);
/* Appends copies of |name| and |value|. */
void sb_headers_add(sb_headers *h, const char *name, const char *value);
void sb_headers_addn(sb_headers *h, const char *name, size_t nlen, const char *value, size_t vlen);
/* The first value of |name|, or NULL. The pointer lives as long as the entry. */
const char *sb_headers_get(const sb_headers *h, const char *name);

/* Names a sender sets itself and never copies from a caller's list, by kind: framing and
 * hop-by-hop (Connection, Content-Length, Keep-Alive, Proxy-Connection, TE, Trailer,
 * Transfer-Encoding, Upgrade), Date, Host. */
#define SB_HDR_HOP 1u
#define SB_HDR_DATE 2u
#define SB_HDR_HOST 4u
/* The SB_HDR_* kind of the header name |name| (|len| bytes, any case), or 0 for any other
 * name. Compares at most two candidates, picked by length (asked for every header of every
 * response and pushed request). */
unsigned sb_headers_reserved(const char *name, size_t len);

/* The reason phrase for |status| ("OK", "Not Found", ...; "Unknown" otherwise). Static. */
const char *sb_http_reason_phrase(int status);

#endif
