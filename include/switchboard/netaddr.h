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
    int https;   /* 1 for https, 0 for http */
    char *host;  /* without brackets for IPv6 literals; owned */
    int port;    /* explicit or the scheme default */
    char *path;  /* path plus "?query", at least "/"; owned */
    char *authority; /* "host:port" as sent in Host (brackets kept for IPv6); owned */
} sb_url;

/* Parses an absolute http(s) URL with a host. Userinfo and fragments are rejected.
 * On success |out| owns its strings (release with sb_url_clear). Returns SB_OK or
 * SB_ERR_INVALID (|out| untouched). */
int sb_url_parse(const char *s, sb_url *out);
void sb_url_clear(sb_url *u);

/* Parses "10.0.0.0/8", "::1/128" or a bare address (full-length prefix).
 * Returns SB_OK or SB_ERR_INVALID. */
int sb_cidr_parse(const char *s, sb_cidr *out);

/* 1 if |sa| lies in |c|. IPv4-mapped IPv6 addresses match IPv4 ranges. */
int sb_cidr_contains(const sb_cidr *c, const struct sockaddr *sa);

/* 1 if connecting to |sa| is forbidden: it lies in a default-forbidden range and in
 * none of the |n| ranges of |allow|. 0 if allowed. */
int sb_addr_forbidden(const struct sockaddr *sa, const sb_cidr *allow, size_t n);

/* Register-time check of a URL host: 1 if |host| is an IP literal (or "localhost")
 * that sb_addr_forbidden refuses, 0 otherwise (names are checked after resolution). */
int sb_host_forbidden(const char *host, const sb_cidr *allow, size_t n);

#endif
