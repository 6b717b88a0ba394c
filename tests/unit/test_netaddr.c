/*
 * test_netaddr.c — URL parsing, CIDR parsing and containment, the default address policy
 * and its --allow-upstream overrides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "switchboard/common.h"
#include "switchboard/netaddr.h"

/* ---- helpers ---- */

static struct sockaddr_storage addr_of(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
    }
    return ss;
}

static int forbidden(const char *ip, const sb_cidr *allow, size_t n)
{
    struct sockaddr_storage ss = addr_of(ip);
    return sb_addr_forbidden((const struct sockaddr *)&ss, allow, n);
}

static int contains(const char *cidr, const char *ip)
{
    sb_cidr c;
    assert_int_equal(sb_cidr_parse(cidr, &c), SB_OK);
    struct sockaddr_storage ss = addr_of(ip);
    return sb_cidr_contains(&c, (const struct sockaddr *)&ss);
}

static void expect_url(const char *s, int https, const char *host, int port, const char *path,
                       const char *authority)
{
    sb_url u;
    memset(&u, 0, sizeof(u));
    int r = sb_url_parse(s, &u);
    if (r != SB_OK)
        fail_msg("sb_url_parse(\"%s\") = %d, expected success", s, r);
    assert_int_equal(u.https, https);
    assert_string_equal(u.host, host);
    assert_int_equal(u.port, port);
    assert_string_equal(u.path, path);
    assert_string_equal(u.authority, authority);
    sb_url_clear(&u);
    assert_null(u.host);
}

static void expect_bad_url(const char *s)
{
    sb_url u;
    memset(&u, 0x5a, sizeof(u));
    sb_url before = u;
    int r = sb_url_parse(s, &u);
    if (r != SB_ERR_INVALID)
        fail_msg("sb_url_parse(\"%s\") = %d, expected SB_ERR_INVALID", s, r);
    assert_memory_equal(&u, &before, sizeof(u)); /* untouched on error */
}

/* ---- URLs ---- */

static void test_url_valid(void **state)
{
    expect_url("http://agent.example:8000/a2a", 0, "agent.example", 8000, "/a2a",
               "agent.example:8000");
    expect_url("http://agent.example", 0, "agent.example", 80, "/", "agent.example");
    expect_url("https://agent.example/", 1, "agent.example", 443, "/", "agent.example");
    expect_url("https://agent.example:8443/x", 1, "agent.example", 8443, "/x",
               "agent.example:8443");
    /* explicit default port: same origin, Host without the port */
    expect_url("http://agent.example:80/", 0, "agent.example", 80, "/", "agent.example");
    /* query kept, path defaulted */
    expect_url("http://h/rpc?tenant=a&x=1", 0, "h", 80, "/rpc?tenant=a&x=1", "h");
    expect_url("http://h?x=1", 0, "h", 80, "/?x=1", "h");
    /* case-insensitive scheme, host lower-cased */
    expect_url("HTTP://Agent.Example:9/P", 0, "agent.example", 9, "/P", "agent.example:9");
    expect_url("http://10.0.0.7:8000/", 0, "10.0.0.7", 8000, "/", "10.0.0.7:8000");
    expect_url("http://h:65535/", 0, "h", 65535, "/", "h:65535");
}

static void test_url_ipv6(void **state)
{
    expect_url("http://[::1]:8080/a2a", 0, "::1", 8080, "/a2a", "[::1]:8080");
    expect_url("http://[2001:db8::7]/", 0, "2001:db8::7", 80, "/", "[2001:db8::7]");
    expect_url("https://[2001:DB8::7]:9443/x?y", 1, "2001:db8::7", 9443, "/x?y",
               "[2001:db8::7]:9443");
    expect_bad_url("http://[::1/");
    expect_bad_url("http://[1.2.3.4]/");        /* brackets hold IPv6 only */
    expect_bad_url("http://[fe80::1%25eth0]/"); /* zone ids refused */
    expect_bad_url("http://[zz::1]/");
}

static void test_url_invalid(void **state)
{
    expect_bad_url("");
    expect_bad_url("ftp://h/");
    expect_bad_url("file:///etc/passwd");
    expect_bad_url("gopher://h/");
    expect_bad_url("h:80");
    expect_bad_url("//h/x");
    expect_bad_url("/relative");
    expect_bad_url("http:///x");
    expect_bad_url("http://:80/");
    expect_bad_url("http://user:pw@h/"); /* userinfo */
    expect_bad_url("http://user@h/");
    expect_bad_url("http://h/#frag"); /* fragment */
    expect_bad_url("http://h/a#");
    expect_bad_url("http://h:0/");
    expect_bad_url("http://h:65536/");
    expect_bad_url("http://h:/p");
    expect_bad_url("http://h:80x/");
    expect_bad_url("http://h/a b");
    expect_bad_url("http://h/a\tb");
    expect_bad_url("http://h/a\r\nX-Evil: 1");
    expect_bad_url("http://h/\x80");
    expect_bad_url(" http://h/");
    expect_bad_url(NULL);
    char longurl[9000];
    memcpy(longurl, "http://h/", 9);
    memset(longurl + 9, 'a', sizeof(longurl) - 10);
    longurl[sizeof(longurl) - 1] = '\0';
    expect_bad_url(longurl);
}

/* ---- CIDR ---- */

static void test_cidr_parse(void **state)
{
    sb_cidr c;
    assert_int_equal(sb_cidr_parse("10.0.0.0/8", &c), SB_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 8);
    assert_int_equal(c.addr[0], 10);

    assert_int_equal(sb_cidr_parse("10.1.2.3/8", &c), SB_OK); /* host bits cleared */
    assert_int_equal(c.addr[1], 0);
    assert_int_equal(c.addr[3], 0);

    assert_int_equal(sb_cidr_parse("192.168.1.77", &c), SB_OK);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(c.addr[3], 77);

    assert_int_equal(sb_cidr_parse("::1/128", &c), SB_OK);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(c.addr[15], 1);

    assert_int_equal(sb_cidr_parse("fe80::/10", &c), SB_OK);
    assert_int_equal(c.prefix, 10);
    assert_int_equal(sb_cidr_parse("2001:db8::", &c), SB_OK);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(sb_cidr_parse("0.0.0.0/0", &c), SB_OK);
    assert_int_equal(c.prefix, 0);

    const char *bad[] = {"",
                         "10.0.0.0/33",
                         "::/129",
                         "10.0.0.0/",
                         "10.0.0.0/-1",
                         "10.0.0/8",
                         "10.0.0.0/8x",
                         "hello/8",
                         "10.0.0.0/ 8",
                         " 10.0.0.0/8",
                         "1.2.3.4/08/1",
                         "::1//64",
                         "10.0.0.0/1000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (sb_cidr_parse(bad[i], &c) != SB_ERR_INVALID)
            fail_msg("sb_cidr_parse(\"%s\") accepted", bad[i]);
    assert_int_equal(sb_cidr_parse(NULL, &c), SB_ERR_INVALID);
}

static void test_cidr_contains(void **state)
{
    assert_true(contains("10.0.0.0/8", "10.255.1.2"));
    assert_false(contains("10.0.0.0/8", "11.0.0.1"));
    assert_true(contains("192.168.0.0/23", "192.168.1.255"));
    assert_false(contains("192.168.0.0/23", "192.168.2.0"));
    assert_true(contains("0.0.0.0/0", "8.8.8.8"));
    assert_true(contains("1.2.3.4", "1.2.3.4"));
    assert_false(contains("1.2.3.4", "1.2.3.5"));

    assert_true(contains("fe80::/10", "fe80::1"));
    assert_true(contains("fe80::/10", "febf::1"));
    assert_false(contains("fe80::/10", "fec0::1"));
    assert_true(contains("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(contains("2001:db8::/32", "2001:db9::1"));

    /* families do not mix, except through IPv4-mapped IPv6 */
    assert_false(contains("10.0.0.0/8", "::1"));
    assert_true(contains("::/0", "10.0.0.1")); /* a v6 range covers v4 through its mapped form */
    assert_true(contains("10.0.0.0/8", "::ffff:10.1.2.3"));
    assert_false(contains("10.0.0.0/8", "::ffff:11.1.2.3"));
    assert_false(contains("10.0.0.0/8", "::10.1.2.3")); /* IPv4-compatible is not mapped */
    assert_true(contains("::ffff:10.0.0.0/104", "10.9.9.9"));
    assert_false(contains("::ffff:10.0.0.0/104", "11.9.9.9"));

    sb_cidr c;
    assert_int_equal(sb_cidr_parse("10.0.0.0/8", &c), SB_OK);
    struct sockaddr sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_family = AF_UNIX;
    assert_false(sb_cidr_contains(&c, &sa));
    assert_false(sb_cidr_contains(&c, NULL));
}

/* ---- policy ---- */

static void test_forbidden_defaults(void **state)
{
    const char *no[] = {"127.0.0.1",
                        "127.255.255.254",
                        "0.0.0.0",
                        "0.1.2.3",
                        "169.254.169.254",
                        "169.254.0.1",
                        "224.0.0.1",
                        "239.255.255.250",
                        "::1",
                        "::",
                        "fe80::1",
                        "febf:ffff::1",
                        "ff02::1",
                        "ff05::2",
                        "::ffff:127.0.0.1",
                        "::ffff:169.254.169.254",
                        "::ffff:0.0.0.0",
                        "::ffff:224.0.0.1"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (!forbidden(no[i], NULL, 0))
            fail_msg("%s should be forbidden by default", no[i]);

    const char *yes[] = {"10.0.0.7",    "192.168.1.1",     "172.16.0.1", "8.8.8.8",     "128.0.0.1",
                         "169.253.0.1", "223.255.255.255", "240.0.0.1",  "2001:db8::1", "fec0::1",
                         "::2",         "::ffff:10.0.0.7", "fd00::1"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (forbidden(yes[i], NULL, 0))
            fail_msg("%s should be allowed by default", yes[i]);

    struct sockaddr sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_family = AF_UNIX;
    assert_true(sb_addr_forbidden(&sa, NULL, 0)); /* not an IP: fail closed */
    assert_true(sb_addr_forbidden(NULL, NULL, 0));
}

static void test_allow_overrides(void **state)
{
    sb_cidr allow[2];
    assert_int_equal(sb_cidr_parse("127.0.0.0/8", &allow[0]), SB_OK);
    assert_int_equal(sb_cidr_parse("169.254.169.254/32", &allow[1]), SB_OK);
    assert_false(forbidden("127.0.0.1", allow, 2));
    assert_false(forbidden("::ffff:127.0.0.1", allow, 2)); /* mapped form follows */
    assert_false(forbidden("169.254.169.254", allow, 2));
    assert_true(forbidden("169.254.169.253", allow, 2));
    assert_true(forbidden("::1", allow, 2)); /* v6 loopback is not opened by a v4 range */
    assert_true(forbidden("0.0.0.0", allow, 2));

    sb_cidr v6;
    assert_int_equal(sb_cidr_parse("::1", &v6), SB_OK);
    assert_false(forbidden("::1", &v6, 1));
    assert_true(forbidden("127.0.0.1", &v6, 1));

    sb_cidr mapped;
    assert_int_equal(sb_cidr_parse("::ffff:127.0.0.1/128", &mapped), SB_OK);
    assert_false(forbidden("127.0.0.1", &mapped, 1));
    assert_true(forbidden("127.0.0.2", &mapped, 1));
}

static void test_host_forbidden(void **state)
{
    assert_true(sb_host_forbidden("127.0.0.1", NULL, 0));
    assert_true(sb_host_forbidden("::1", NULL, 0));
    assert_true(sb_host_forbidden("[::1]", NULL, 0));
    assert_true(sb_host_forbidden("::ffff:127.0.0.1", NULL, 0));
    assert_true(sb_host_forbidden("169.254.169.254", NULL, 0));
    assert_true(sb_host_forbidden("localhost", NULL, 0));
    assert_true(sb_host_forbidden("LOCALHOST", NULL, 0));
    assert_true(sb_host_forbidden("localhost.", NULL, 0));
    assert_true(sb_host_forbidden("api.localhost", NULL, 0));
    assert_false(sb_host_forbidden("notlocalhost", NULL, 0));
    assert_false(sb_host_forbidden("localhost.example", NULL, 0));
    assert_false(sb_host_forbidden("10.0.0.7", NULL, 0));
    assert_false(sb_host_forbidden("agent.example", NULL, 0)); /* names: checked after DNS */
    assert_false(sb_host_forbidden("", NULL, 0));

    sb_cidr lo4;
    assert_int_equal(sb_cidr_parse("127.0.0.0/8", &lo4), SB_OK);
    assert_false(sb_host_forbidden("127.0.0.1", &lo4, 1));
    assert_false(sb_host_forbidden("localhost", &lo4, 1)); /* reachable over 127.0.0.1 */
    assert_true(sb_host_forbidden("::1", &lo4, 1));
    sb_cidr lo6;
    assert_int_equal(sb_cidr_parse("::1/128", &lo6), SB_OK);
    assert_false(sb_host_forbidden("localhost", &lo6, 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_valid),       cmocka_unit_test(test_url_ipv6),
        cmocka_unit_test(test_url_invalid),     cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_contains),   cmocka_unit_test(test_forbidden_defaults),
        cmocka_unit_test(test_allow_overrides), cmocka_unit_test(test_host_forbidden),
    };
    return cmocka_run_group_tests_name("netaddr", tests, NULL, NULL);
}
