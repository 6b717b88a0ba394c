/*
 * netaddr.c — upstream URL parsing and the address policy (see netaddr.h).
 *
 * URLs are split by http_parser_parse_url (libhttp-parser), never by hand, so the router
 * and the agents' HTTP stacks agree on where the host ends. On top of the parser this
 * file enforces what an upstream URL may be: http or https, a host, no userinfo (it would
 * put credentials in the registry and in logs), no fragment, only printable ASCII (the
 * path ends up verbatim in a request line, so a control byte there would be a header
 * injection). Host names are lower-cased so that origin keys compare equal.
 *
 * The address policy is a fixed list of default-forbidden ranges plus the operator's
 * --allow-upstream ranges. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are compared as
 * the IPv4 address they carry, in both directions, so "::ffff:127.0.0.1" cannot slip past
 * 127.0.0.0/8 and "127.0.0.1/32" in the allow list also opens its mapped form.
 *
 * Everything here is pure: no I/O, no global state, no resolution.
 */
#include "switchboard/netaddr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"

/* Long enough for any sane agent URL; bounds the request line we will write. */
#define URL_MAX_LEN 8192

#define V4(a, b, c, d)                                                                             \
    {                                                                                              \
        (a), (b), (c), (d)                                                                         \
    }

/* The default-forbidden ranges (netaddr.h explains why each is here). */
static const sb_cidr forbidden_defaults[] = {
    {AF_INET, V4(127, 0, 0, 0), 8},    /* loopback */
    {AF_INET, V4(0, 0, 0, 0), 8},      /* "this network"; 0.0.0.0 reaches the local host */
    {AF_INET, V4(169, 254, 0, 0), 16}, /* link-local, cloud metadata (169.254.169.254) */
    {AF_INET, V4(224, 0, 0, 0), 4},    /* multicast */
    {AF_INET6, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128}, /* ::1 */
    {AF_INET6, {0}, 128},                                              /* :: unspecified */
    {AF_INET6, {0xfe, 0x80}, 10},                                      /* link-local */
    {AF_INET6, {0xff}, 8},                                             /* multicast */
};

static int has_prefix_ci(const char *s, size_t len, const char *p)
{
    size_t n = strlen(p);
    return len == n && strncasecmp(s, p, n) == 0;
}

/* Printable ASCII only: the URL is written verbatim into a request line. No '#' either:
 * http_parser reports an empty fragment ("/a#") as no fragment at all. */
static int url_chars_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return 0;
    }
    return 1;
}

int sb_url_parse(const char *s, sb_url *out)
{
    if (s == NULL)
        return SB_ERR_INVALID;
    size_t len = strlen(s);
    if (len == 0 || len > URL_MAX_LEN || !url_chars_ok(s, len))
        return SB_ERR_INVALID;

    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(s, len, 0, &u) != 0)
        return SB_ERR_INVALID;
    if (!(u.field_set & (1 << UF_SCHEMA)) || !(u.field_set & (1 << UF_HOST)))
        return SB_ERR_INVALID;
    if (u.field_set & ((1 << UF_USERINFO) | (1 << UF_FRAGMENT)))
        return SB_ERR_INVALID;

    const char *scheme = s + u.field_data[UF_SCHEMA].off;
    size_t scheme_len = u.field_data[UF_SCHEMA].len;
    int https;
    if (has_prefix_ci(scheme, scheme_len, "http"))
        https = 0;
    else if (has_prefix_ci(scheme, scheme_len, "https"))
        https = 1;
    else
        return SB_ERR_INVALID;

    const char *host = s + u.field_data[UF_HOST].off;
    size_t host_len = u.field_data[UF_HOST].len;
    if (host_len == 0 || host_len > 253)
        return SB_ERR_INVALID;
    /* http_parser strips the brackets of an IPv6 literal; look at the raw text. */
    int bracketed = u.field_data[UF_HOST].off > 0 && host[-1] == '[';
    if (bracketed) {
        char tmp[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        /* No zone ids ("%25eth0"): link-local is forbidden anyway, and the zone is local
         * to this host, which makes the URL meaningless to share. */
        if (host_len >= sizeof(tmp))
            return SB_ERR_INVALID;
        memcpy(tmp, host, host_len);
        tmp[host_len] = '\0';
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return SB_ERR_INVALID;
    }

    int port = https ? 443 : 80;
    if (u.field_set & (1 << UF_PORT)) {
        if (u.field_data[UF_PORT].len == 0 || u.port == 0)
            return SB_ERR_INVALID;
        port = u.port;
    }

    const char *path = "/";
    size_t path_len = 1;
    if (u.field_set & (1 << UF_PATH)) {
        path = s + u.field_data[UF_PATH].off;
        path_len = u.field_data[UF_PATH].len;
        if (path_len == 0 || path[0] != '/')
            return SB_ERR_INVALID;
    }
    const char *query = NULL;
    size_t query_len = 0;
    if (u.field_set & (1 << UF_QUERY)) {
        query = s + u.field_data[UF_QUERY].off;
        query_len = u.field_data[UF_QUERY].len;
    }

    /* Everything checked: build the result. */
    sb_url r;
    r.https = https;
    r.port = port;
    r.host = sb_strndup(host, host_len);
    for (char *p = r.host; *p; p++)
        *p = (char)tolower((unsigned char)*p);

    size_t full_path_len = path_len + (query ? 1 + query_len : 0);
    r.path = sb_malloc(full_path_len + 1);
    memcpy(r.path, path, path_len);
    if (query) {
        r.path[path_len] = '?';
        memcpy(r.path + path_len + 1, query, query_len);
    }
    r.path[full_path_len] = '\0';

    /* Authority as sent in Host: the default port is left out, as browsers and curl do,
     * so virtual-host checks on the agent side see the name they expect. */
    size_t alen = host_len + 2 + 1 + 5 + 1;
    r.authority = sb_malloc(alen);
    int default_port = port == (https ? 443 : 80);
    const char *lb = bracketed ? "[" : "", *rb = bracketed ? "]" : "";
    if (default_port)
        snprintf(r.authority, alen, "%s%s%s", lb, r.host, rb);
    else
        snprintf(r.authority, alen, "%s%s%s:%d", lb, r.host, rb, port);

    *out = r;
    return SB_OK;
}

void sb_url_clear(sb_url *u)
{
    if (u == NULL)
        return;
    sb_free(u->host);
    sb_free(u->path);
    sb_free(u->authority);
    memset(u, 0, sizeof(*u));
}

int sb_cidr_parse(const char *s, sb_cidr *out)
{
    if (s == NULL)
        return SB_ERR_INVALID;
    char buf[INET6_ADDRSTRLEN + 8];
    size_t len = strlen(s);
    if (len == 0 || len >= sizeof(buf))
        return SB_ERR_INVALID;
    memcpy(buf, s, len + 1);

    int prefix = -1;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = '\0';
        const char *p = slash + 1;
        if (*p == '\0' || strlen(p) > 3)
            return SB_ERR_INVALID;
        prefix = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return SB_ERR_INVALID;
            prefix = prefix * 10 + (*p - '0');
        }
    }

    sb_cidr c;
    memset(&c, 0, sizeof(c));
    if (inet_pton(AF_INET, buf, c.addr) == 1) {
        c.family = AF_INET;
        if (prefix < 0)
            prefix = 32;
        if (prefix > 32)
            return SB_ERR_INVALID;
    } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
        c.family = AF_INET6;
        if (prefix < 0)
            prefix = 128;
        if (prefix > 128)
            return SB_ERR_INVALID;
    } else {
        return SB_ERR_INVALID;
    }
    c.prefix = prefix;

    /* Clear host bits, so "10.1.2.3/8" means 10.0.0.0/8 and comparisons stay simple. */
    int nbytes = c.family == AF_INET ? 4 : 16;
    for (int i = 0; i < nbytes; i++) {
        int bits = prefix - i * 8;
        if (bits >= 8)
            continue;
        c.addr[i] &= bits <= 0 ? 0 : (unsigned char)(0xff << (8 - bits));
    }
    *out = c;
    return SB_OK;
}

static const unsigned char v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int prefix_match(const unsigned char *a, const unsigned char *b, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (full && memcmp(a, b, (size_t)full) != 0)
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((a[full] & mask) != (b[full] & mask))
            return 0;
    }
    return 1;
}

int sb_cidr_contains(const sb_cidr *c, const struct sockaddr *sa)
{
    if (c == NULL || sa == NULL)
        return 0;
    unsigned char buf[16];
    const unsigned char *addr;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        if (c->family == AF_INET) {
            addr = (const unsigned char *)&in->sin_addr;
        } else {
            memcpy(buf, v4mapped_prefix, 12);
            memcpy(buf + 12, &in->sin_addr, 4);
            addr = buf;
        }
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const unsigned char *a6 = (const unsigned char *)&in6->sin6_addr;
        if (c->family == AF_INET6) {
            addr = a6;
        } else {
            if (memcmp(a6, v4mapped_prefix, 12) != 0)
                return 0;
            addr = a6 + 12;
        }
    } else {
        return 0;
    }
    if (c->family != AF_INET && c->family != AF_INET6)
        return 0;
    return prefix_match(addr, c->addr, c->prefix);
}

int sb_addr_forbidden(const struct sockaddr *sa, const sb_cidr *allow, size_t n)
{
    if (sa == NULL || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return 1; /* fail closed on anything that is not an IP address */
    int in_default = 0;
    for (size_t i = 0; i < SB_ARRAY_LEN(forbidden_defaults); i++) {
        if (sb_cidr_contains(&forbidden_defaults[i], sa)) {
            in_default = 1;
            break;
        }
    }
    if (!in_default)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (sb_cidr_contains(&allow[i], sa))
            return 0;
    return 1;
}

/* "localhost", "LocalHost.", "api.localhost": names RFC 6761 reserves for loopback. */
static int is_localhost_name(const char *host)
{
    size_t len = strlen(host);
    if (len && host[len - 1] == '.')
        len--;
    static const char lh[] = "localhost";
    size_t lhlen = sizeof(lh) - 1;
    if (len == lhlen)
        return strncasecmp(host, lh, lhlen) == 0;
    if (len > lhlen + 1)
        return host[len - lhlen - 1] == '.' && strncasecmp(host + len - lhlen, lh, lhlen) == 0;
    return 0;
}

int sb_host_forbidden(const char *host, const sb_cidr *allow, size_t n)
{
    if (host == NULL || *host == '\0')
        return 0;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    memset(&in, 0, sizeof(in));
    memset(&in6, 0, sizeof(in6));
    in.sin_family = AF_INET;
    in6.sin6_family = AF_INET6;

    char tmp[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof(tmp)) {
        memcpy(tmp, host + 1, len - 2);
        tmp[len - 2] = '\0';
        host = tmp;
    }
    if (inet_pton(AF_INET, host, &in.sin_addr) == 1)
        return sb_addr_forbidden((const struct sockaddr *)&in, allow, n);
    if (inet_pton(AF_INET6, host, &in6.sin6_addr) == 1)
        return sb_addr_forbidden((const struct sockaddr *)&in6, allow, n);
    if (is_localhost_name(host)) {
        /* A localhost name resolves to 127.0.0.1 and/or ::1; it is usable when either is. */
        in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        in6.sin6_addr = in6addr_loopback;
        return sb_addr_forbidden((const struct sockaddr *)&in, allow, n) &&
               sb_addr_forbidden((const struct sockaddr *)&in6, allow, n);
    }
    return 0;
}
