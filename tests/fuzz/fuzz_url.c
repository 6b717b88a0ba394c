/*
 * fuzz_url.c — URL and address-policy parsing (netaddr.c, config's HOST:PORT, probe's
 * URL comparison).
 *
 * Input: one string (a NUL ends it early). It is tried as an agent URL (sb_url_parse),
 * a --allow-upstream CIDR (sb_cidr_parse), a --listen HOST:PORT and a register-time
 * host check. What parses must keep its documented shape: a URL has a host, a port in
 * 1..65535, a path starting with '/', no byte outside printable ASCII (the path goes
 * verbatim into a request line), and equals itself under sb_probe_same_url; a CIDR has a
 * sane prefix and contains its own address. The first 16 bytes also make an IPv4 and an
 * IPv6 address for the forbidden-range policy, with and without the CIDR as an opening.
 * Corpus: tests/corpus/url/.
 */
#include "fuzz.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "switchboard/common.h"
#include "switchboard/config.h"
#include "switchboard/netaddr.h"
#include "switchboard/probe.h"

static int printable(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    return 1;
}

static void check_policy(const uint8_t *data, size_t size, const sb_cidr *allow, size_t n)
{
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof(v4));
    memset(&v6, 0, sizeof(v6));
    v4.sin_family = AF_INET;
    v6.sin6_family = AF_INET6;
    memcpy(&v4.sin_addr, data, size < 4 ? size : 4);
    memcpy(&v6.sin6_addr, data, size < 16 ? size : 16);
    int f4 = sb_addr_forbidden((const struct sockaddr *)&v4, allow, n);
    int f6 = sb_addr_forbidden((const struct sockaddr *)&v6, allow, n);
    fuzz_check(f4 == 0 || f4 == 1);
    fuzz_check(f6 == 0 || f6 == 1);
    /* 127.0.0.1 is refused by default; only an opening can allow it. */
    if (n == 0) {
        struct sockaddr_in lo;
        memset(&lo, 0, sizeof(lo));
        lo.sin_family = AF_INET;
        lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fuzz_check(sb_addr_forbidden((const struct sockaddr *)&lo, NULL, 0) == 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);

    sb_url u;
    memset(&u, 0, sizeof(u));
    if (sb_url_parse(s, &u) == SB_OK) {
        fuzz_check(u.host != NULL && u.host[0] != '\0');
        fuzz_check(u.port >= 1 && u.port <= 65535);
        fuzz_check(u.path != NULL && u.path[0] == '/');
        fuzz_check(printable(u.path) && printable(u.authority));
        fuzz_check(sb_probe_same_url(s, s) == 1);
        (void)sb_host_forbidden(u.host, NULL, 0);
        sb_url_clear(&u);
    }
    sb_url_clear(&u); /* twice is allowed */

    sb_cidr c;
    int have_cidr = sb_cidr_parse(s, &c) == SB_OK;
    if (have_cidr) {
        fuzz_check(c.family == AF_INET || c.family == AF_INET6);
        fuzz_check(c.prefix >= 0 && c.prefix <= (c.family == AF_INET ? 32 : 128));
        if (c.family == AF_INET) {
            struct sockaddr_in a;
            memset(&a, 0, sizeof(a));
            a.sin_family = AF_INET;
            memcpy(&a.sin_addr, c.addr, 4);
            fuzz_check(sb_cidr_contains(&c, (const struct sockaddr *)&a) == 1);
        } else {
            struct sockaddr_in6 a;
            memset(&a, 0, sizeof(a));
            a.sin6_family = AF_INET6;
            memcpy(&a.sin6_addr, c.addr, 16);
            fuzz_check(sb_cidr_contains(&c, (const struct sockaddr *)&a) == 1);
        }
        (void)sb_host_forbidden(s, &c, 1);
    }
    check_policy(data, size, have_cidr ? &c : NULL, have_cidr ? 1 : 0);
    (void)sb_host_forbidden(s, NULL, 0);

    char host[256];
    int port = 0;
    if (sb_config_split_hostport(s, host, sizeof(host), &port) == SB_OK)
        fuzz_check(port >= 1 && port <= 65535 && host[0] != '\0');

    sb_free(s);
    return 0;
}
