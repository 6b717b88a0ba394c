/*
 * test_config.c — unit tests for config.c: defaults, every flag in both spellings, the
 * environment fallback and its precedence, every class of error and its one-line message,
 * the admin token sources, TLS consistency, --allow-upstream, and HOST:PORT splitting.
 *
 * Each test starts from an environment without SWITCHBOARD_* variables. Files the
 * parser reads (certificates, token files) live in a private temporary directory made by
 * the group setup and removed by its teardown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "switchboard/common.h"
#include "switchboard/config.h"

extern char **environ;

static char tmpdir[256];

static void path_in_tmp(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void write_file(const char *name, const void *data, size_t len, mode_t mode)
{
    char p[512];
    path_in_tmp(p, sizeof(p), name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd != -1);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    chmod(p, mode);
}

/* A self-signed certificate as PEM in |name|, for --upstream-ca. */
static void write_ca(const char *name)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"test CA", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    char p[512];
    path_in_tmp(p, sizeof(p), name);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    PEM_write_X509(fp, x);
    fclose(fp);
    X509_free(x);
    EVP_PKEY_free(key);
}

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sb-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    write_file("cert.pem", "-----BEGIN CERTIFICATE-----\n", 28, 0644);
    write_file("key.pem", "-----BEGIN PRIVATE KEY-----\n", 28, 0600);
    write_file("token", "tok-from-file\n", 14, 0600);
    write_file("token-crlf", "tok-crlf \t\r\n\r\n  \n", 17, 0600);
    write_file("token-empty", "", 0, 0600);
    write_file("token-blank", " \n\t\r\n", 5, 0600);
    write_file("token-space", "two words\n", 10, 0600);
    write_file("token-nul", "ab\0cd\n", 6, 0600);
    write_file("token-leading", "  tok\n", 6, 0600);
    static char big[5000];
    memset(big, 'x', sizeof(big));
    write_file("token-big", big, sizeof(big), 0600);
    write_file("unreadable", "secret\n", 7, 0000);
    write_ca("ca.pem");
    char p[512];
    path_in_tmp(p, sizeof(p), "adir");
    mkdir(p, 0755);
    return 0;
}

static int group_teardown(void **state)
{
    static const char *const files[] = {
        "cert.pem",    "key.pem",   "token",         "token-crlf", "token-empty", "token-blank",
        "token-space", "token-nul", "token-leading", "token-big",  "unreadable",  "ca.pem",
    };
    char p[512];
    for (size_t i = 0; i < SB_ARRAY_LEN(files); i++) {
        path_in_tmp(p, sizeof(p), files[i]);
        unlink(p);
    }
    path_in_tmp(p, sizeof(p), "adir");
    rmdir(p);
    rmdir(tmpdir);
    return 0;
}

/* Unsets every SWITCHBOARD_* variable (names are collected first: unsetenv edits environ). */
static int clean_env(void **state)
{
    char *names[256];
    size_t n = 0;
    for (char **e = environ; *e != NULL && n < SB_ARRAY_LEN(names); e++) {
        if (strncmp(*e, "SWITCHBOARD_", 12) == 0) {
            size_t l = strcspn(*e, "=");
            names[n++] = strndup(*e, l);
        }
    }
    for (size_t i = 0; i < n; i++) {
        unsetenv(names[i]);
        free(names[i]);
    }
    return 0;
}

static char err[512];

/* Parses "switchboard" followed by the NULL-terminated arguments. */
static int parse(sb_config *cfg, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"switchboard";
    va_list ap;
    va_start(ap, cfg);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL && argc < 63)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    memset(err, 0, sizeof(err));
    return sb_config_parse(cfg, argc, argv, err, sizeof(err));
}

/* Asserts the parse failed with one line mentioning every given fragment. */
static void expect_error(int rc, ...)
{
    if (rc != SB_ERR_INVALID)
        fail_msg("expected SB_ERR_INVALID, got %d (err \"%s\")", rc, err);
    if (err[0] == '\0' || strchr(err, '\n') != NULL)
        fail_msg("error must be one non-empty line: \"%s\"", err);
    va_list ap;
    va_start(ap, rc);
    const char *frag;
    while ((frag = va_arg(ap, const char *)) != NULL) {
        if (strstr(err, frag) == NULL) {
            va_end(ap);
            fail_msg("error \"%s\" should mention \"%s\"", err, frag);
        }
    }
    va_end(ap);
}

static void expect_ok(int rc)
{
    if (rc != SB_OK)
        fail_msg("expected success, got %d: %s", rc, err);
}

/* The documented default for --threads: the cores this process may run on, capped. */
static int online_cores(void)
{
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    int n = CPU_COUNT(&set);
    assert_true(n >= 1);
    return n > 256 ? 256 : n;
}

static void test_defaults(void **state)
{
    sb_config c;
    expect_ok(parse(&c, "--admin-token", "t0k", NULL));
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_null(c.tls_listen);
    assert_null(c.tls_cert);
    assert_null(c.tls_key);
    assert_string_equal(c.redis_url, "redis://127.0.0.1:6379");
    assert_string_equal(c.admin_token, "t0k");
    assert_int_equal(c.threads, online_cores());
    assert_int_equal(c.connect_timeout_ms, 3000);
    assert_int_equal(c.push_timeout_s, 300);
    assert_int_equal(c.max_body_bytes, 4194304);
    assert_int_equal(c.queue_ttl_s, 604800);
    assert_int_equal(c.lease_s, 60);
    assert_int_equal(c.max_deliveries, 5);
    assert_null(c.allow_upstream);
    assert_int_equal(c.n_allow_upstream, 0);
    assert_int_equal(c.log_json, 1);
    assert_int_equal(c.max_header_bytes, 16384);
    assert_int_equal(c.idle_timeout_s, 60);
    assert_int_equal(c.request_timeout_s, 30);
    assert_int_equal(c.shutdown_timeout_s, 25);
    assert_null(c.upstream_ca);
    assert_string_equal(err, "");
    sb_config_clear(&c);
}

/* Checks the values given by every_flag_args / every_flag_env. */
static void check_every_flag(const sb_config *c, const char *cert, const char *key)
{
    assert_string_equal(c->listen, "0.0.0.0:18080");
    assert_string_equal(c->tls_listen, "[::1]:18443");
    assert_string_equal(c->tls_cert, cert);
    assert_string_equal(c->tls_key, key);
    assert_string_equal(c->redis_url, "unix:///run/redis/redis.sock");
    assert_string_equal(c->admin_token, "admin-secret");
    assert_int_equal(c->threads, 3);
    assert_int_equal(c->connect_timeout_ms, 1500);
    assert_int_equal(c->push_timeout_s, 120);
    assert_int_equal(c->max_body_bytes, 1048576);
    assert_int_equal(c->queue_ttl_s, 3600);
    assert_int_equal(c->lease_s, 30);
    assert_int_equal(c->max_deliveries, 9);
    assert_int_equal(c->n_allow_upstream, 1);
    assert_int_equal(c->allow_upstream[0].family, AF_INET);
    assert_int_equal(c->allow_upstream[0].prefix, 8);
    assert_int_equal(c->allow_upstream[0].addr[0], 127);
    assert_int_equal(c->log_json, 0);
    assert_int_equal(c->max_header_bytes, 8192);
    assert_int_equal(c->idle_timeout_s, 15);
    assert_int_equal(c->request_timeout_s, 10);
    assert_int_equal(c->shutdown_timeout_s, 5);
}

static void test_every_flag(void **state)
{
    char cert[512], key[512];
    path_in_tmp(cert, sizeof(cert), "cert.pem");
    path_in_tmp(key, sizeof(key), "key.pem");
    sb_config c;
    expect_ok(parse(&c, "--listen", "0.0.0.0:18080", "--tls-listen", "[::1]:18443", "--tls-cert",
                    cert, "--tls-key", key, "--redis", "unix:///run/redis/redis.sock",
                    "--admin-token", "admin-secret", "--threads", "3", "--connect-timeout-ms",
                    "1500", "--push-timeout-s", "120", "--max-body-bytes", "1048576",
                    "--queue-ttl-s", "3600", "--lease-s", "30", "--max-deliveries", "9",
                    "--allow-upstream", "127.0.0.0/8", "--log-format", "text", "--max-header-bytes",
                    "8192", "--idle-timeout-s", "15", "--request-timeout-s", "10",
                    "--shutdown-timeout-s", "5", NULL));
    check_every_flag(&c, cert, key);
    sb_config_clear(&c);
}

static void test_every_flag_equals_form(void **state)
{
    char cert[600], key[600], p[512];
    path_in_tmp(p, sizeof(p), "cert.pem");
    snprintf(cert, sizeof(cert), "--tls-cert=%s", p);
    path_in_tmp(p, sizeof(p), "key.pem");
    snprintf(key, sizeof(key), "--tls-key=%s", p);
    sb_config c;
    expect_ok(parse(&c, "--listen=0.0.0.0:18080", "--tls-listen=[::1]:18443", cert, key,
                    "--redis=unix:///run/redis/redis.sock", "--admin-token=admin-secret",
                    "--threads=3", "--connect-timeout-ms=1500", "--push-timeout-s=120",
                    "--max-body-bytes=1048576", "--queue-ttl-s=3600", "--lease-s=30",
                    "--max-deliveries=9", "--allow-upstream=127.0.0.0/8", "--log-format=text",
                    "--max-header-bytes=8192", "--idle-timeout-s=15", "--request-timeout-s=10",
                    "--shutdown-timeout-s=5", NULL));
    check_every_flag(&c, cert + strlen("--tls-cert="), key + strlen("--tls-key="));
    sb_config_clear(&c);

    /* A value may itself contain '=' (only the first one splits). */
    expect_ok(parse(&c, "--admin-token=a=b==", NULL));
    assert_string_equal(c.admin_token, "a=b==");
    sb_config_clear(&c);
}

static void test_env_fallback(void **state)
{
    char cert[512], key[512];
    path_in_tmp(cert, sizeof(cert), "cert.pem");
    path_in_tmp(key, sizeof(key), "key.pem");
    setenv("SWITCHBOARD_LISTEN", "0.0.0.0:18080", 1);
    setenv("SWITCHBOARD_TLS_LISTEN", "[::1]:18443", 1);
    setenv("SWITCHBOARD_TLS_CERT", cert, 1);
    setenv("SWITCHBOARD_TLS_KEY", key, 1);
    setenv("SWITCHBOARD_REDIS", "unix:///run/redis/redis.sock", 1);
    setenv("SWITCHBOARD_ADMIN_TOKEN", "admin-secret", 1);
    setenv("SWITCHBOARD_THREADS", "3", 1);
    setenv("SWITCHBOARD_CONNECT_TIMEOUT_MS", "1500", 1);
    setenv("SWITCHBOARD_PUSH_TIMEOUT_S", "120", 1);
    setenv("SWITCHBOARD_MAX_BODY_BYTES", "1048576", 1);
    setenv("SWITCHBOARD_QUEUE_TTL_S", "3600", 1);
    setenv("SWITCHBOARD_LEASE_S", "30", 1);
    setenv("SWITCHBOARD_MAX_DELIVERIES", "9", 1);
    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "127.0.0.0/8", 1);
    setenv("SWITCHBOARD_LOG_FORMAT", "text", 1);
    setenv("SWITCHBOARD_MAX_HEADER_BYTES", "8192", 1);
    setenv("SWITCHBOARD_IDLE_TIMEOUT_S", "15", 1);
    setenv("SWITCHBOARD_REQUEST_TIMEOUT_S", "10", 1);
    setenv("SWITCHBOARD_SHUTDOWN_TIMEOUT_S", "5", 1);
    sb_config c;
    expect_ok(parse(&c, NULL));
    check_every_flag(&c, cert, key);
    sb_config_clear(&c);
}

static void test_flag_over_env(void **state)
{
    setenv("SWITCHBOARD_THREADS", "3", 1);
    setenv("SWITCHBOARD_LISTEN", "10.0.0.1:1", 1);
    setenv("SWITCHBOARD_LOG_FORMAT", "text", 1);
    setenv("SWITCHBOARD_ADMIN_TOKEN", "from-env", 1);
    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "10.0.0.0/8,fd00::/8", 1);
    setenv("SWITCHBOARD_PUSH_TIMEOUT_S", "7", 1);
    sb_config c;
    expect_ok(parse(&c, "--threads", "5", "--listen=127.0.0.1:9", "--log-format", "json",
                    "--admin-token", "from-flag", "--allow-upstream", "192.168.0.0/16", NULL));
    assert_int_equal(c.threads, 5);
    assert_string_equal(c.listen, "127.0.0.1:9");
    assert_int_equal(c.log_json, 1);
    assert_string_equal(c.admin_token, "from-flag");
    /* The flags replace the env list, they do not extend it. */
    assert_int_equal(c.n_allow_upstream, 1);
    assert_int_equal(c.allow_upstream[0].addr[0], 192);
    /* Unflagged settings still come from the environment. */
    assert_int_equal(c.push_timeout_s, 7);
    sb_config_clear(&c);

    /* A bad env value is not consulted when the flag is given. */
    setenv("SWITCHBOARD_THREADS", "lots", 1);
    expect_ok(parse(&c, "--threads", "2", NULL));
    assert_int_equal(c.threads, 2);
    sb_config_clear(&c);
}

static void test_empty_env_is_unset(void **state)
{
    setenv("SWITCHBOARD_ADMIN_TOKEN", "t", 1);
    setenv("SWITCHBOARD_THREADS", "", 1);
    setenv("SWITCHBOARD_LISTEN", "", 1);
    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "", 1);
    sb_config c;
    expect_ok(parse(&c, NULL));
    assert_int_equal(c.threads, online_cores());
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_int_equal(c.n_allow_upstream, 0);
    sb_config_clear(&c);
}

static void test_last_flag_wins(void **state)
{
    sb_config c;
    expect_ok(parse(&c, "--admin-token", "a", "--threads", "2", "--threads=4", "--lease-s", "9",
                    "--lease-s", "11", NULL));
    assert_int_equal(c.threads, 4);
    assert_int_equal(c.lease_s, 11);
    sb_config_clear(&c);
}

static void test_bad_numbers(void **state)
{
    static const struct {
        const char *flag, *value, *shown;
    } cases[] = {
        {"--threads", "abc", "\"abc\""},
        {"--threads", "4x", "\"4x\""},
        {"--threads", "1.5", "\"1.5\""},
        {"--threads", " 4", "\" 4\""},
        {"--threads", "+4", "\"+4\""},
        {"--threads", "0x4", "\"0x4\""},
        {"--threads", "-", "\"-\""},
        {"--threads", "0", "\"0\""},
        {"--threads", "257", "\"257\""},
        {"--threads", "-1", "\"-1\""},
        {"--threads", "99999999999999999999999", "\"99999999999999999999999\""},
        {"--connect-timeout-ms", "0", "\"0\""},
        {"--connect-timeout-ms", "3s", "\"3s\""},
        {"--push-timeout-s", "86401", "\"86401\""},
        {"--max-body-bytes", "4MiB", "\"4MiB\""},
        {"--max-body-bytes", "0", "\"0\""},
        {"--max-body-bytes", "1073741825", "\"1073741825\""},
        {"--queue-ttl-s", "-604800", "\"-604800\""},
        {"--lease-s", "0", "\"0\""},
        {"--max-deliveries", "0", "\"0\""},
        {"--max-deliveries", "1001", "\"1001\""},
        {"--max-header-bytes", "1023", "\"1023\""},
        {"--idle-timeout-s", "1e3", "\"1e3\""},
        {"--request-timeout-s", "3601", "\"3601\""},
        {"--shutdown-timeout-s", "0", "\"0\""},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        sb_config c;
        int rc = parse(&c, "--admin-token", "t", cases[i].flag, cases[i].value, NULL);
        expect_error(rc, cases[i].flag, cases[i].shown, "expected an integer", NULL);
        sb_config_clear(&c);
    }
    /* The env variable is named when the bad value came from it. */
    setenv("SWITCHBOARD_CONNECT_TIMEOUT_MS", "soon", 1);
    sb_config c;
    expect_error(parse(&c, "--admin-token", "t", NULL), "SWITCHBOARD_CONNECT_TIMEOUT_MS",
                 "\"soon\"", NULL);
    assert_null(strstr(err, "--connect-timeout-ms"));
    sb_config_clear(&c);
}

/* Each numeric flag accepts its documented bounds and refuses one step beyond. */
static void test_number_bounds(void **state)
{
    static const struct {
        const char *flag;
        long min, max;
    } cases[] = {
        {"--threads", 1, 256},
        {"--connect-timeout-ms", 1, 3600000},
        {"--push-timeout-s", 1, 86400},
        {"--max-body-bytes", 1, 1073741824},
        {"--queue-ttl-s", 1, 31622400},
        {"--lease-s", 1, 86400},
        {"--max-deliveries", 1, 1000},
        {"--max-header-bytes", 1024, 1048576},
        {"--idle-timeout-s", 1, 86400},
        {"--request-timeout-s", 1, 3600},
        {"--shutdown-timeout-s", 1, 3600},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        long vals[4] = {cases[i].min, cases[i].max, cases[i].min - 1, cases[i].max + 1};
        for (int k = 0; k < 4; k++) {
            char v[32];
            snprintf(v, sizeof(v), "%ld", vals[k]);
            sb_config c;
            int rc = parse(&c, "--admin-token", "t", cases[i].flag, v, NULL);
            if ((k < 2) != (rc == SB_OK))
                fail_msg("%s %s: rc %d (%s)", cases[i].flag, v, rc, err);
            sb_config_clear(&c);
        }
    }
}

static void test_unknown_flag(void **state)
{
    sb_config c;
    expect_error(parse(&c, "--admin-token", "t", "--bogus", "1", NULL), "unknown flag --bogus",
                 NULL);
    sb_config_clear(&c);
    /* A mistyped secret flag must not leak its value. */
    expect_error(parse(&c, "--admin-tokn=hunter2-secret", NULL), "unknown flag --admin-tokn", NULL);
    assert_null(strstr(err, "hunter2"));
    sb_config_clear(&c);
    expect_error(parse(&c, "-x", NULL), "unknown flag -x", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "-admin-token=hunter2-secret", NULL), "unknown flag -admin-token", NULL);
    assert_null(strstr(err, "hunter2"));
    sb_config_clear(&c);
    expect_error(parse(&c, "--", NULL), "unknown flag --", NULL);
    sb_config_clear(&c);
    /* Flag names are exact: no prefixes, no case folding. */
    expect_error(parse(&c, "--admin-token", "t", "--thread", "2", NULL), "--thread", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--THREADS", "2", NULL), "--THREADS", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "extra", NULL), "unexpected argument \"extra\"",
                 NULL);
    sb_config_clear(&c);
    /* Unknown SWITCHBOARD_* variables are not errors (tools share the prefix). */
    setenv("SWITCHBOARD_NOT_A_FLAG", "x", 1);
    expect_ok(parse(&c, "--admin-token", "t", NULL));
    sb_config_clear(&c);
}

static void test_missing_value(void **state)
{
    sb_config c;
    expect_error(parse(&c, "--admin-token", "t", "--listen", NULL), "--listen needs a value", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--listen", "--threads", "2", NULL), "--listen needs a value", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--threads=", NULL), "--threads", "empty", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--listen", "", NULL), "--listen", "empty", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", NULL), "--admin-token needs a value", NULL);
    sb_config_clear(&c);
}

static void test_missing_admin_token(void **state)
{
    sb_config c;
    int rc = parse(&c, "--threads", "2", NULL);
    assert_int_equal(rc, SB_ERR_INVALID);
    assert_string_equal(err, "no admin token: pass --admin-token, --admin-token-file or set "
                             "SWITCHBOARD_ADMIN_TOKEN");
    sb_config_clear(&c);
}

static void test_admin_token_file(void **state)
{
    char p[512];
    sb_config c;
    path_in_tmp(p, sizeof(p), "token");
    expect_ok(parse(&c, "--admin-token-file", p, NULL));
    assert_string_equal(c.admin_token, "tok-from-file");
    sb_config_clear(&c);

    path_in_tmp(p, sizeof(p), "token-crlf");
    expect_ok(parse(&c, "--admin-token-file", p, NULL));
    assert_string_equal(c.admin_token, "tok-crlf");
    sb_config_clear(&c);

    /* From the environment, as a file too. */
    path_in_tmp(p, sizeof(p), "token");
    setenv("SWITCHBOARD_ADMIN_TOKEN_FILE", p, 1);
    expect_ok(parse(&c, NULL));
    assert_string_equal(c.admin_token, "tok-from-file");
    sb_config_clear(&c);
}

static void test_admin_token_file_errors(void **state)
{
    static const struct {
        const char *file, *frag;
    } cases[] = {
        {"does-not-exist", "No such file"},
        {"adir", "directory"},
        {"token-empty", "is empty"},
        {"token-blank", "is empty"},
        {"token-space", "whitespace"},
        {"token-leading", "whitespace"},
        {"token-nul", "NUL"},
        {"token-big", "larger than"},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        char p[512];
        path_in_tmp(p, sizeof(p), cases[i].file);
        sb_config c;
        expect_error(parse(&c, "--admin-token-file", p, NULL), "--admin-token-file", cases[i].frag,
                     NULL);
        /* The token is never echoed, even a bad one. */
        assert_null(strstr(err, "two words"));
        assert_null(strstr(err, "xxxx"));
        sb_config_clear(&c);
    }
    if (geteuid() != 0) { /* root reads a mode-000 file anyway */
        char p[512];
        path_in_tmp(p, sizeof(p), "unreadable");
        sb_config c;
        expect_error(parse(&c, "--admin-token-file", p, NULL), "Permission denied", NULL);
        assert_null(strstr(err, "secret"));
        sb_config_clear(&c);
    }
    /* From the environment the variable is named. */
    setenv("SWITCHBOARD_ADMIN_TOKEN_FILE", "/nonexistent/token", 1);
    sb_config c;
    expect_error(parse(&c, NULL), "SWITCHBOARD_ADMIN_TOKEN_FILE", "/nonexistent/token", NULL);
    sb_config_clear(&c);
}

static void test_admin_token_sources(void **state)
{
    char p[512];
    path_in_tmp(p, sizeof(p), "token");
    sb_config c;
    expect_error(parse(&c, "--admin-token", "a", "--admin-token-file", p, NULL),
                 "mutually exclusive", NULL);
    sb_config_clear(&c);

    setenv("SWITCHBOARD_ADMIN_TOKEN", "env-tok", 1);
    setenv("SWITCHBOARD_ADMIN_TOKEN_FILE", p, 1);
    expect_error(parse(&c, NULL), "SWITCHBOARD_ADMIN_TOKEN and SWITCHBOARD_ADMIN_TOKEN_FILE", NULL);
    assert_null(strstr(err, "env-tok"));
    sb_config_clear(&c);

    /* Any command-line source beats both environment sources. */
    expect_ok(parse(&c, "--admin-token", "flag-tok", NULL));
    assert_string_equal(c.admin_token, "flag-tok");
    sb_config_clear(&c);
    unsetenv("SWITCHBOARD_ADMIN_TOKEN_FILE");
    expect_ok(parse(&c, "--admin-token-file", p, NULL));
    assert_string_equal(c.admin_token, "tok-from-file");
    sb_config_clear(&c);
    expect_ok(parse(&c, NULL));
    assert_string_equal(c.admin_token, "env-tok");
    sb_config_clear(&c);
}

static void test_admin_token_never_echoed(void **state)
{
    static const char *const bad[] = {"sec ret", "secret\nline2", "s\x01secret", "secr\xc3\xa9t"};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        sb_config c;
        expect_error(parse(&c, "--admin-token", bad[i], NULL), "--admin-token", NULL);
        assert_null(strstr(err, "sec"));
        sb_config_clear(&c);
        setenv("SWITCHBOARD_ADMIN_TOKEN", bad[i], 1);
        expect_error(parse(&c, NULL), "SWITCHBOARD_ADMIN_TOKEN", NULL);
        assert_null(strstr(err, "sec"));
        sb_config_clear(&c);
        unsetenv("SWITCHBOARD_ADMIN_TOKEN");
    }
}

static void test_tls(void **state)
{
    char cert[512], key[512], dir[512], missing[512];
    path_in_tmp(cert, sizeof(cert), "cert.pem");
    path_in_tmp(key, sizeof(key), "key.pem");
    path_in_tmp(dir, sizeof(dir), "adir");
    path_in_tmp(missing, sizeof(missing), "missing.pem");
    sb_config c;

    expect_ok(parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", "--tls-cert", cert,
                    "--tls-key", key, NULL));
    assert_string_equal(c.tls_listen, "127.0.0.1:8443");
    sb_config_clear(&c);

    expect_error(parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", NULL),
                 "--tls-listen requires both --tls-cert and --tls-key", NULL);
    sb_config_clear(&c);
    expect_error(
        parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", "--tls-cert", cert, NULL),
        "requires both", NULL);
    sb_config_clear(&c);
    expect_error(
        parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", "--tls-key", key, NULL),
        "requires both", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--tls-cert", cert, "--tls-key", key, NULL),
                 "--tls-cert given without --tls-listen", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", "--tls-cert",
                       missing, "--tls-key", key, NULL),
                 "cannot read --tls-cert", "missing.pem", "No such file", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--tls-listen", "127.0.0.1:8443", "--tls-cert",
                       cert, "--tls-key", dir, NULL),
                 "--tls-key", "directory", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--listen", "127.0.0.1:8443", "--tls-listen",
                       "127.0.0.1:8443", "--tls-cert", cert, "--tls-key", key, NULL),
                 "--tls-listen and --listen", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--tls-listen", "8443", "--tls-cert", cert,
                       "--tls-key", key, NULL),
                 "--tls-listen", "\"8443\"", NULL);
    sb_config_clear(&c);

    setenv("SWITCHBOARD_TLS_LISTEN", "127.0.0.1:8443", 1);
    expect_error(parse(&c, "--admin-token", "t", NULL), "SWITCHBOARD_TLS_LISTEN requires both",
                 NULL);
    sb_config_clear(&c);
}

static void test_upstream_ca(void **state)
{
    char ca[512], cert[512], dir[512], missing[512], eq[600];
    path_in_tmp(ca, sizeof(ca), "ca.pem");
    path_in_tmp(cert, sizeof(cert), "cert.pem"); /* a BEGIN line and nothing else */
    path_in_tmp(dir, sizeof(dir), "adir");
    path_in_tmp(missing, sizeof(missing), "missing.pem");
    sb_config c;

    expect_ok(parse(&c, "--admin-token", "t", "--upstream-ca", ca, NULL));
    assert_string_equal(c.upstream_ca, ca);
    sb_config_clear(&c);
    assert_null(c.upstream_ca);

    snprintf(eq, sizeof(eq), "--upstream-ca=%s", ca);
    expect_ok(parse(&c, "--admin-token", "t", eq, NULL));
    assert_string_equal(c.upstream_ca, ca);
    sb_config_clear(&c);

    setenv("SWITCHBOARD_UPSTREAM_CA", ca, 1);
    expect_ok(parse(&c, "--admin-token", "t", NULL));
    assert_string_equal(c.upstream_ca, ca);
    sb_config_clear(&c);
    /* The flag wins over the environment. */
    setenv("SWITCHBOARD_UPSTREAM_CA", missing, 1);
    expect_ok(parse(&c, "--admin-token", "t", "--upstream-ca", ca, NULL));
    assert_string_equal(c.upstream_ca, ca);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", NULL), "cannot read SWITCHBOARD_UPSTREAM_CA",
                 "missing.pem", "No such file", NULL);
    sb_config_clear(&c);
    unsetenv("SWITCHBOARD_UPSTREAM_CA");

    expect_error(parse(&c, "--admin-token", "t", "--upstream-ca", missing, NULL),
                 "cannot read --upstream-ca", "missing.pem", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--upstream-ca", dir, NULL), "--upstream-ca",
                 "directory", NULL);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--upstream-ca", cert, NULL), "--upstream-ca",
                 "cert.pem", "holds no PEM certificate", NULL);
    sb_config_clear(&c);
}

static void test_allow_upstream(void **state)
{
    sb_config c;
    expect_ok(parse(&c, "--admin-token", "t", "--allow-upstream", "127.0.0.1",
                    "--allow-upstream=169.254.0.0/16", "--allow-upstream", "::1/128", NULL));
    assert_int_equal(c.n_allow_upstream, 3);
    assert_int_equal(c.allow_upstream[0].family, AF_INET);
    assert_int_equal(c.allow_upstream[0].prefix, 32);
    assert_int_equal(c.allow_upstream[1].prefix, 16);
    assert_int_equal(c.allow_upstream[1].addr[0], 169);
    assert_int_equal(c.allow_upstream[2].family, AF_INET6);
    assert_int_equal(c.allow_upstream[2].prefix, 128);
    assert_int_equal(c.allow_upstream[2].addr[15], 1);
    sb_config_clear(&c);

    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "10.0.0.0/8, fe80::/10 ,127.0.0.0/8", 1);
    expect_ok(parse(&c, "--admin-token", "t", NULL));
    assert_int_equal(c.n_allow_upstream, 3);
    assert_int_equal(c.allow_upstream[0].addr[0], 10);
    assert_int_equal(c.allow_upstream[1].family, AF_INET6);
    assert_int_equal(c.allow_upstream[1].prefix, 10);
    assert_int_equal(c.allow_upstream[2].addr[0], 127);
    sb_config_clear(&c);

    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "10.0.0.0/8,nonsense", 1);
    expect_error(parse(&c, "--admin-token", "t", NULL), "SWITCHBOARD_ALLOW_UPSTREAM",
                 "\"nonsense\"", NULL);
    sb_config_clear(&c);
    setenv("SWITCHBOARD_ALLOW_UPSTREAM", "10.0.0.0/8,,127.0.0.0/8", 1);
    expect_error(parse(&c, "--admin-token", "t", NULL), "SWITCHBOARD_ALLOW_UPSTREAM", "empty CIDR",
                 NULL);
    sb_config_clear(&c);
    unsetenv("SWITCHBOARD_ALLOW_UPSTREAM");

    static const char *const bad[] = {"10.0.0.0/33", "10.0.0.0/8,11.0.0.0/8", "::1/129",
                                      "localhost", "10.0.0.0/"};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        char shown[64];
        snprintf(shown, sizeof(shown), "\"%s\"", bad[i]);
        expect_error(parse(&c, "--admin-token", "t", "--allow-upstream", bad[i], NULL),
                     "--allow-upstream", shown, NULL);
        sb_config_clear(&c);
    }
}

static void test_redis_url(void **state)
{
    static const char *const good[] = {
        "redis://127.0.0.1:6379", "redis://:pw@redis:6380/2", "redis://user:pw@[::1]:6379",
        "redis://localhost",      "unix:///tmp/redis.sock",   "unix:///tmp/redis.sock?db=3",
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(good); i++) {
        sb_config c;
        expect_ok(parse(&c, "--admin-token", "t", "--redis", good[i], NULL));
        assert_string_equal(c.redis_url, good[i]);
        sb_config_clear(&c);
    }
    static const char *const bad[] = {
        "http://127.0.0.1:6379",
        "127.0.0.1:6379",
        "redis://",
        "redis:///0",
        "unix://",
        "unix://tmp/r.sock",
        "unix:///",
        "REDIS://host",
        "redis://:pw word@host",
        "rediss://host",
        "redis://host\n:pw",
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        sb_config c;
        expect_error(parse(&c, "--admin-token", "t", "--redis", bad[i], NULL), "--redis",
                     "redis://", NULL);
        /* The URL may hold a password: never shown. */
        assert_null(strstr(err, "pw"));
        sb_config_clear(&c);
    }
}

static void test_log_format(void **state)
{
    sb_config c;
    expect_ok(parse(&c, "--admin-token", "t", "--log-format", "text", NULL));
    assert_int_equal(c.log_json, 0);
    sb_config_clear(&c);
    expect_ok(parse(&c, "--admin-token", "t", "--log-format", "json", NULL));
    assert_int_equal(c.log_json, 1);
    sb_config_clear(&c);
    expect_error(parse(&c, "--admin-token", "t", "--log-format", "JSON", NULL), "--log-format",
                 "\"JSON\"", "json or text", NULL);
    sb_config_clear(&c);
}

static void test_listen_errors(void **state)
{
    static const char *const bad[] = {"8080",        "127.0.0.1",   "127.0.0.1:",      ":8080",
                                      "::1:8080",    "127.0.0.1:0", "127.0.0.1:65536", "[::1]8080",
                                      "host name:80"};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        sb_config c;
        char shown[64];
        snprintf(shown, sizeof(shown), "\"%s\"", bad[i]);
        expect_error(parse(&c, "--admin-token", "t", "--listen", bad[i], NULL), "--listen", shown,
                     "HOST:PORT", NULL);
        sb_config_clear(&c);
    }
}

/* Values are shown sanitized and truncated, so the error stays one short line. */
static void test_error_is_one_line(void **state)
{
    sb_config c;
    expect_error(parse(&c, "--admin-token", "t", "--threads", "4\n--evil", NULL), "\"4?--evil\"",
                 NULL);
    sb_config_clear(&c);
    char longv[300];
    memset(longv, '9', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    expect_error(parse(&c, "--admin-token", "t", "--lease-s", longv, NULL), "...\"", NULL);
    assert_true(strlen(err) < 200);
    sb_config_clear(&c);
}

static void test_small_error_buffer(void **state)
{
    char small[12];
    char *argv[] = {(char *)"switchboard", (char *)"--bogus-flag-name", NULL};
    sb_config c;
    memset(small, 'Z', sizeof(small));
    assert_int_equal(sb_config_parse(&c, 2, argv, small, sizeof(small)), SB_ERR_INVALID);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    sb_config_clear(&c);
    /* No buffer at all is allowed too. */
    assert_int_equal(sb_config_parse(&c, 2, argv, NULL, 0), SB_ERR_INVALID);
    sb_config_clear(&c);
}

static void test_clear(void **state)
{
    sb_config c;
    expect_ok(parse(&c, "--admin-token", "t", "--allow-upstream", "10.0.0.0/8", NULL));
    sb_config_clear(&c);
    assert_null(c.listen);
    assert_null(c.admin_token);
    assert_null(c.allow_upstream);
    assert_int_equal(c.n_allow_upstream, 0);
    sb_config_clear(&c); /* twice is harmless */
    sb_config zero;
    memset(&zero, 0, sizeof(zero));
    sb_config_clear(&zero);
    /* argc 0 (no program name) parses like an empty command line. */
    setenv("SWITCHBOARD_ADMIN_TOKEN", "t", 1);
    char *argv[] = {NULL};
    expect_ok(sb_config_parse(&c, 0, argv, err, sizeof(err)));
    sb_config_clear(&c);
}

static void test_split_hostport(void **state)
{
    static const struct {
        const char *in, *host;
        int port;
    } good[] = {
        {"127.0.0.1:8080", "127.0.0.1", 8080},
        {"0.0.0.0:1", "0.0.0.0", 1},
        {"localhost:65535", "localhost", 65535},
        {"my-host.example.com:443", "my-host.example.com", 443},
        {"redis_1:6379", "redis_1", 6379},
        {"[::1]:8080", "::1", 8080},
        {"[::]:80", "::", 80},
        {"[2001:db8::1]:443", "2001:db8::1", 443},
        {"[::ffff:127.0.0.1]:9", "::ffff:127.0.0.1", 9},
        {"[fe80::1%eth0]:8080", "fe80::1%eth0", 8080},
        {"127.0.0.1:08080", "127.0.0.1", 8080},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(good); i++) {
        char host[64];
        int port = -1;
        if (sb_config_split_hostport(good[i].in, host, sizeof(host), &port) != SB_OK)
            fail_msg("%s should split", good[i].in);
        assert_string_equal(host, good[i].host);
        assert_int_equal(port, good[i].port);
    }
    static const char *const bad[] = {
        "",           "8080",         ":8080",     "host:",        "host:0",
        "host:65536", "host:-1",      "host:+80",  "host:80a",     "host:123456",
        "::1:8080",   "[::1]",        "[::1]8080", "[::1]:",       "[::1:8080",
        "[]:80",      "[1.2.3.4]:80", "[::g]:80",  "ho st:80",     "host:80:90",
        "[::1]:80x",  "[fe80::1%]:1", "host/x:80", "h\xc3\xa9:80", "[::1]:0",
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        char host[64] = "untouched";
        int port = -7;
        if (sb_config_split_hostport(bad[i], host, sizeof(host), &port) != SB_ERR_INVALID)
            fail_msg("\"%s\" should be refused", bad[i]);
        assert_string_equal(host, "untouched");
        assert_int_equal(port, -7);
    }
    /* The host must fit with its terminator. */
    char tiny[9];
    int port;
    assert_int_equal(sb_config_split_hostport("127.0.0.1:80", tiny, sizeof(tiny), &port),
                     SB_ERR_INVALID);
    char fits[10];
    assert_int_equal(sb_config_split_hostport("127.0.0.1:80", fits, sizeof(fits), &port), SB_OK);
    assert_string_equal(fits, "127.0.0.1");
    assert_int_equal(sb_config_split_hostport(NULL, fits, sizeof(fits), &port), SB_ERR_INVALID);
}

/* Runs sb_config_parse in a child with stdout captured; returns its exit status. */
static int run_child(char **argv, int argc, char *out, size_t cap)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        sb_config c;
        char e[256];
        sb_config_parse(&c, argc, argv, e, sizeof(e));
        _exit(99); /* --help must exit by itself */
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_help(void **state)
{
    static char out[16384];
    char *argv[] = {(char *)"switchboard", (char *)"--threads", (char *)"bogus", (char *)"--help",
                    NULL};
    assert_int_equal(run_child(argv, 4, out, sizeof(out)), 0);
    static const char *const must[] = {
        "--listen HOST:PORT",
        "127.0.0.1:8080",
        "--tls-listen",
        "--tls-cert",
        "--tls-key",
        "--redis URL",
        "redis://127.0.0.1:6379",
        "--admin-token TOKEN",
        "--admin-token-file FILE",
        "SWITCHBOARD_ADMIN_TOKEN",
        "--threads N",
        "cores this process may run on",
        "--connect-timeout-ms",
        "3000",
        "--push-timeout-s",
        "300",
        "--max-body-bytes",
        "4194304",
        "--queue-ttl-s",
        "604800",
        "--lease-s",
        "--max-deliveries",
        "--allow-upstream CIDR",
        "SWITCHBOARD_ALLOW_UPSTREAM",
        "--log-format json|text",
        "--max-header-bytes",
        "16384",
        "--idle-timeout-s",
        "--request-timeout-s",
        "--shutdown-timeout-s",
        "SWITCHBOARD_CONNECT_TIMEOUT_MS",
        "SWITCHBOARD_SHUTDOWN_TIMEOUT_S",
        "--upstream-ca FILE",
        "SWITCHBOARD_UPSTREAM_CA",
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(must); i++)
        if (strstr(out, must[i]) == NULL)
            fail_msg("--help output lacks \"%s\"", must[i]);
    char *argv2[] = {(char *)"switchboard", (char *)"-h", NULL};
    assert_int_equal(run_child(argv2, 2, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "Usage: switchboard"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clean_env),
        cmocka_unit_test_setup(test_every_flag, clean_env),
        cmocka_unit_test_setup(test_every_flag_equals_form, clean_env),
        cmocka_unit_test_setup(test_env_fallback, clean_env),
        cmocka_unit_test_setup(test_flag_over_env, clean_env),
        cmocka_unit_test_setup(test_empty_env_is_unset, clean_env),
        cmocka_unit_test_setup(test_last_flag_wins, clean_env),
        cmocka_unit_test_setup(test_bad_numbers, clean_env),
        cmocka_unit_test_setup(test_number_bounds, clean_env),
        cmocka_unit_test_setup(test_unknown_flag, clean_env),
        cmocka_unit_test_setup(test_missing_value, clean_env),
        cmocka_unit_test_setup(test_missing_admin_token, clean_env),
        cmocka_unit_test_setup(test_admin_token_file, clean_env),
        cmocka_unit_test_setup(test_admin_token_file_errors, clean_env),
        cmocka_unit_test_setup(test_admin_token_sources, clean_env),
        cmocka_unit_test_setup(test_admin_token_never_echoed, clean_env),
        cmocka_unit_test_setup(test_tls, clean_env),
        cmocka_unit_test_setup(test_upstream_ca, clean_env),
        cmocka_unit_test_setup(test_allow_upstream, clean_env),
        cmocka_unit_test_setup(test_redis_url, clean_env),
        cmocka_unit_test_setup(test_log_format, clean_env),
        cmocka_unit_test_setup(test_listen_errors, clean_env),
        cmocka_unit_test_setup(test_error_is_one_line, clean_env),
        cmocka_unit_test_setup(test_small_error_buffer, clean_env),
        cmocka_unit_test_setup(test_clear, clean_env),
        cmocka_unit_test(test_split_hostport),
        cmocka_unit_test_setup(test_help, clean_env),
    };
    return cmocka_run_group_tests_name("config", tests, group_setup, group_teardown);
}
