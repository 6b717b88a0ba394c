/*
 * netaddr.h — upstream URL parsing and the address policy.
 *
 * Agents register URLs that switchboard will connect to, so a registration is also a
 * request to make the router open connections on someone's behalf (SSRF). By default
 * every address in loopback (127/8, ::1), link-local (169.254/16 — cloud metadata —,
 * fe80::/10), multicast (224/4, ff00::/8) and unspecified (0.0.0.0/8, ::) ranges is
 * forbidden, including IPv4-mapped IPv6 forms of them; `--allow-upstream CIDR` opens
 * a range. The policy is checked twice: on the literal host at register time, and on
 * every resolved address right before connect (so DNS cannot smuggle a forbidden
 * address in later).
 */
#ifndef SWITCHBOARD_NETADDR_H
#define SWITCHBOARD_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

typedef struct sb_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;
} sb_cidr;

typedef struct sb_url {
    int https;       /* 1 for https, 0 for http */
    char *host;      /* without brackets for IPv6 literals; owned */
    int port;        /* explicit or the scheme default */
    char *path;      /* path plus "?query", at least "/"; owned */
    char *authority; /* as sent in Host: "host:port", or "host" when the port is the
                      * scheme default; brackets kept for IPv6; owned */
} sb_url;

/* Parses an absolute http(s) URL with a host, split by http_parser_parse_url. Rejected
 * (SB_ERR_INVALID, |out| untouched): other schemes, no host, userinfo, any '#'
 * (fragment), port 0 or an empty port, bytes outside printable ASCII (the path goes
 * verbatim into a request line), URLs over 8192 bytes, IPv6 literals that inet_pton
 * refuses or that carry a zone id. The scheme is case-insensitive and the host is
 * lower-cased. On success |out| owns its strings (release with sb_url_clear). */
int sb_url_parse(const char *s, sb_url *out);
/* Frees the strings of |u| and zeroes it; NULL and zeroed URLs are fine. */
void sb_url_clear(sb_url *u);

/* Parses "10.0.0.0/8", "::1/128" or a bare address (full-length prefix). Host bits
 * beyond the prefix are cleared ("10.1.2.3/8" is 10.0.0.0/8).
 * Returns SB_OK or SB_ERR_INVALID. */
int sb_cidr_parse(const char *s, sb_cidr *out);

/* 1 if |sa| lies in |c|. IPv4-mapped IPv6 addresses match IPv4 ranges, and IPv4
 * addresses match IPv6 ranges through their mapped form (::ffff:a.b.c.d). 0 for
 * anything that is not AF_INET/AF_INET6. */
int sb_cidr_contains(const sb_cidr *c, const struct sockaddr *sa);

/* 1 if connecting to |sa| is forbidden: it lies in a default-forbidden range and in
 * none of the |n| ranges of |allow| (may be NULL when |n| is 0). 0 if allowed. A
 * sockaddr that is not an IP address is forbidden (fail closed). */
int sb_addr_forbidden(const struct sockaddr *sa, const sb_cidr *allow, size_t n);

/* Register-time check of a URL host: 1 if |host| is an IP literal (brackets allowed)
 * that sb_addr_forbidden refuses, or "localhost" / "*.localhost" while both 127.0.0.1
 * and ::1 are refused; 0 otherwise (other names are checked after resolution). */
int sb_host_forbidden(const char *host, const sb_cidr *allow, size_t n);

#endif
