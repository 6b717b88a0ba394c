/*
 * config.c — flags and SWITCHBOARD_* environment variables into one sb_config.
 *
 * Every option is one row of the table below; parsing, the environment fallback and the
 * --help text are all driven by it, so a flag cannot exist without its env variable, its
 * default and its help line. Parsing runs in three steps: collect the raw strings from
 * argv (last one wins, --allow-upstream accumulates), fill the gaps from the environment
 * (an empty variable counts as unset), then convert and validate each value and check the
 * combinations (TLS, admin token).
 *
 * Runs once in main() before any thread starts. It must never echo the admin token or
 * the Redis URL (which may carry a password) in an error, and never leave an error
 * message spanning more than one line: values are shown truncated with control
 * characters replaced.
 */
#include "switchboard/config.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/metrics.h" /* SB_VERSION */
#include "switchboard/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENV_PREFIX "SWITCHBOARD_"
#define TOKEN_FILE_MAX 4096 /* a token file larger than this is certainly not a token */
#define THREADS_MAX 256

typedef enum {
    OPT_HOSTPORT,   /* char * validated by sb_config_split_hostport */
    OPT_FILE,       /* char *, a path that must open for reading */
    OPT_REDIS,      /* char *, redis://..., unix:///... or redis+sentinel://... */
    OPT_INT,        /* int in [min,max] */
    OPT_SIZE,       /* size_t in [min,max] */
    OPT_CIDR,       /* repeatable, appended to allow_upstream */
    OPT_LOGFMT,     /* json|text into log_json */
    OPT_TOKEN,      /* the admin token itself */
    OPT_TOKEN_FILE, /* a file holding the admin token */
} opt_kind;

typedef struct opt_def {
    const char *name; /* without the leading "--" */
    const char *arg;  /* placeholder in --help */
    opt_kind kind;
    size_t off; /* field offset for OPT_HOSTPORT/FILE/REDIS/INT/SIZE */
    long min, max;
    const char *help; /* one line, the default included */
} opt_def;

enum {
    O_LISTEN,
    O_TLS_LISTEN,
    O_TLS_CERT,
    O_TLS_KEY,
    O_REDIS,
    O_ADMIN_TOKEN,
    O_ADMIN_TOKEN_FILE,
    O_THREADS,
    O_CONNECT_TIMEOUT_MS,
    O_PUSH_TIMEOUT_S,
    O_MAX_BODY_BYTES,
    O_QUEUE_TTL_S,
    O_PUSHED_RECORD_TTL_S,
    O_LEASE_S,
    O_MAX_DELIVERIES,
    O_RETRY_MAX_S,
    O_ALLOW_UPSTREAM,
    O_UPSTREAM_CA,
    O_LOG_FORMAT,
    O_MAX_HEADER_BYTES,
    O_IDLE_TIMEOUT_S,
    O_REQUEST_TIMEOUT_S,
    O_SHUTDOWN_TIMEOUT_S,
    O_MAX_INFLIGHT_PER_ENDPOINT,
    O_REDIS_COMMAND_TIMEOUT_MS,
    O_COUNT
};

#define F(field) offsetof(sb_config, field)

static const opt_def opts[O_COUNT] = {
    [O_LISTEN] = {"listen", "HOST:PORT", OPT_HOSTPORT, F(listen), 0, 0,
                  "cleartext listener, HTTP/1.1 and h2c (default 127.0.0.1:8080)"},
    [O_TLS_LISTEN] = {"tls-listen", "HOST:PORT", OPT_HOSTPORT, F(tls_listen), 0, 0,
                      "TLS listener, ALPN h2 and http/1.1; needs --tls-cert and --tls-key "
                      "(default: none)"},
    [O_TLS_CERT] = {"tls-cert", "FILE", OPT_FILE, F(tls_cert), 0, 0,
                    "PEM certificate chain for --tls-listen"},
    [O_TLS_KEY] = {"tls-key", "FILE", OPT_FILE, F(tls_key), 0, 0,
                   "PEM private key for --tls-listen"},
    [O_REDIS] = {"redis", "URL", OPT_REDIS, F(redis_url), 0, 0,
                 "redis://[[user]:pass@]host[:port][/db], unix:///path.sock, "
                 "redis+sentinel://[[user]:pass@]host:port[,host:port...]/master or, for a "
                 "Redis Cluster, redis+cluster://host:port[,host:port...] (a redis:// URL of a "
                 "cluster node is detected too; default redis://127.0.0.1:6379)"},
    [O_ADMIN_TOKEN] = {"admin-token", "TOKEN", OPT_TOKEN, 0, 0, 0,
                       "admin bearer token (required: this, --admin-token-file or "
                       "SWITCHBOARD_ADMIN_TOKEN)"},
    [O_ADMIN_TOKEN_FILE] = {"admin-token-file", "FILE", OPT_TOKEN_FILE, 0, 0, 0,
                            "read the admin token from FILE (trailing whitespace stripped)"},
    [O_THREADS] = {"threads", "N", OPT_INT, F(threads), 1, THREADS_MAX,
                   "event loops sharing the listen port, 1..256 "
                   "(default: cores this process may run on)"},
    [O_CONNECT_TIMEOUT_MS] = {"connect-timeout-ms", "MS", OPT_INT, F(connect_timeout_ms), 1,
                              3600000, "upstream connect timeout (default 3000)"},
    [O_PUSH_TIMEOUT_S] = {"push-timeout-s", "S", OPT_INT, F(push_timeout_s), 1, 86400,
                          "wait this long for an agent's answer to a push (default 300)"},
    [O_MAX_BODY_BYTES] = {"max-body-bytes", "N", OPT_SIZE, F(max_body_bytes), 1, 1073741824,
                          "largest request body accepted, else 413 (default 4194304)"},
    [O_QUEUE_TTL_S] = {"queue-ttl-s", "S", OPT_INT, F(queue_ttl_s), 1, 31622400,
                       "how long a queued message waits before it expires (default 604800)"},
    [O_PUSHED_RECORD_TTL_S] = {"pushed-record-ttl-s", "S", OPT_INT, F(pushed_record_ttl_s), 0,
                               31622400,
                               "how long a pushed message's delivery record stays readable; "
                               "0 keeps none (default 600)"},
    [O_LEASE_S] = {"lease-s", "S", OPT_INT, F(lease_s), 1, 86400,
                   "default inbox lease before redelivery (default 60)"},
    [O_MAX_DELIVERIES] = {"max-deliveries", "N", OPT_INT, F(max_deliveries), 1, 1000,
                          "leases of one message before it is dead-lettered (default 5)"},
    [O_RETRY_MAX_S] = {"retry-max-s", "S", OPT_INT, F(retry_max_s), 1, 86400,
                       "longest wait between switchboard's own redelivery attempts of a "
                       "push-mode workspace's queue (default 300)"},
    [O_ALLOW_UPSTREAM] = {"allow-upstream", "CIDR", OPT_CIDR, 0, 0, 0,
                          "open a default-forbidden upstream range; repeatable "
                          "(env: comma-separated list)"},
    [O_UPSTREAM_CA] = {"upstream-ca", "FILE", OPT_FILE, F(upstream_ca), 0, 0,
                       "PEM CA certificates trusted for https agents, in addition to the "
                       "system store (default: the system store only)"},
    [O_LOG_FORMAT] = {"log-format", "json|text", OPT_LOGFMT, 0, 0, 0,
                      "log lines on stdout (default json)"},
    [O_MAX_HEADER_BYTES] = {"max-header-bytes", "N", OPT_SIZE, F(max_header_bytes), 1024, 1048576,
                            "largest request line + headers, else 431 (default 16384)"},
    [O_IDLE_TIMEOUT_S] = {"idle-timeout-s", "S", OPT_INT, F(idle_timeout_s), 1, 86400,
                          "close a keep-alive connection idle this long (default 60)"},
    [O_REQUEST_TIMEOUT_S] = {"request-timeout-s", "S", OPT_INT, F(request_timeout_s), 1, 3600,
                             "a request's head and body must arrive within this (default 30)"},
    [O_SHUTDOWN_TIMEOUT_S] = {"shutdown-timeout-s", "S", OPT_INT, F(shutdown_timeout_s), 1, 3600,
                              "on SIGTERM, bound on finishing in-flight work (default 25)"},
    [O_MAX_INFLIGHT_PER_ENDPOINT] = {"max-inflight-per-endpoint", "N", OPT_INT,
                                     F(max_inflight_per_endpoint), 0, 1000000,
                                     "pushes in flight to one workspace per instance when its "
                                     "registration sets no max_concurrency; more fall back busy "
                                     "(0: unlimited; default 64)"},
    [O_REDIS_COMMAND_TIMEOUT_MS] = {"redis-command-timeout-ms", "MS", OPT_INT,
                                    F(redis_command_timeout_ms), 100, 3600000,
                                    "drop a Redis connection whose oldest command has no reply "
                                    "this long (default 10000)"},
};

#undef F

/* Where one option's raw value came from, for error messages. */
typedef struct raw_value {
    const char *val; /* borrowed from argv or environ; NULL if not given */
    int from_env;
} raw_value;

typedef struct parse_state {
    raw_value raw[O_COUNT];
    const char **cidr_args; /* every --allow-upstream of the command line, in order */
    size_t n_cidr_args;
    char *err;
    size_t errlen;
} parse_state;

static int fail(parse_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(parse_state *st, const char *fmt, ...)
{
    if (st->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->err, st->errlen, fmt, ap);
        va_end(ap);
    }
    return SB_ERR_INVALID;
}

/* Copies |v| for display: at most 64 bytes, control and non-ASCII bytes as '?', so a
 * value can never break the one-line error or the terminal. */
static const char *shown(const char *v, char buf[80])
{
    size_t i = 0;
    for (; v[i] != '\0' && i < 64; i++) {
        unsigned char c = (unsigned char)v[i];
        buf[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (v[i] != '\0') {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* "SWITCHBOARD_" + the flag name upper-cased, '-' as '_'. */
static void env_name(const opt_def *d, char *out, size_t cap)
{
    size_t n = snprintf(out, cap, "%s", ENV_PREFIX);
    for (const char *p = d->name; *p != '\0' && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

/* The name of the source of option |i| as the user wrote it: "--flag" or the env var. */
static const char *source_name(const parse_state *st, int i, char *buf, size_t cap)
{
    if (st->raw[i].from_env)
        env_name(&opts[i], buf, cap);
    else
        snprintf(buf, cap, "--%s", opts[i].name);
    return buf;
}

static int find_opt(const char *name, size_t len)
{
    for (int i = 0; i < O_COUNT; i++)
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
            return i;
    return -1;
}

static int default_threads(void);

static void print_usage(FILE *f)
{
    char env[64];
    fputs("Usage: switchboard [--flag VALUE | --flag=VALUE]...\n"
          "\n"
          "An A2A (JSON-RPC over HTTP) delivery router: pushes each message to the target\n"
          "workspace's agent and falls back to a Redis poll queue, recording why.\n"
          "\n"
          "Every flag --some-flag can also be set with the environment variable\n"
          "SWITCHBOARD_SOME_FLAG; the command line wins, an empty variable counts as unset.\n"
          "\n",
          f);
    for (int i = 0; i < O_COUNT; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s %s", opts[i].name, opts[i].arg);
        env_name(&opts[i], env, sizeof(env));
        fprintf(f, "  %-34s env %s\n      %s\n", left, env, opts[i].help);
    }
    int cores = default_threads();
    fprintf(f,
            "  %-34s\n      print this help and exit\n"
            "  %-34s\n      print the version and exit\n"
            "\n"
            "Default --threads here: %d. Full reference: docs/configuration.md\n",
            "--help, -h", "--version", cores);
}

/* The cores this process may run on (taskset, cpuset cgroups), which can be fewer than
 * the machine's online cores; sysconf when the affinity mask cannot be read. */
static int default_threads(void)
{
    cpu_set_t set;
    long n = -1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    if (n < 1)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > THREADS_MAX ? THREADS_MAX : (int)n;
}

static void set_defaults(sb_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = sb_strdup("127.0.0.1:8080");
    cfg->redis_url = sb_strdup("redis://127.0.0.1:6379");
    cfg->threads = default_threads();
    cfg->connect_timeout_ms = 3000;
    cfg->push_timeout_s = 300;
    cfg->max_body_bytes = 4u << 20;
    cfg->queue_ttl_s = 7 * 24 * 3600;
    cfg->pushed_record_ttl_s = 600;
    cfg->lease_s = 60;
    cfg->max_deliveries = 5;
    cfg->retry_max_s = 300;
    cfg->log_json = 1;
    cfg->max_header_bytes = 16384;
    cfg->idle_timeout_s = 60;
    cfg->request_timeout_s = 30;
    cfg->shutdown_timeout_s = 25;
    cfg->max_inflight_per_endpoint = 64;
    cfg->redis_command_timeout_ms = 10000;
}

/* Step 1: the command line. Only syntax is checked here; values are checked later so
 * that env and flags share one code path. */
static int collect_argv(parse_state *st, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char show[80];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (a[0] == '-') {
                char nm[80]; /* up to any '=': "-token=SECRET" must not leak the value */
                snprintf(nm, sizeof(nm), "%.*s", (int)strcspn(a, "="), a);
                return fail(st, "unknown flag %s (see --help)", shown(nm, show));
            }
            return fail(st, "unexpected argument \"%s\": flags start with -- (see --help)",
                        shown(a, show));
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int o = find_opt(name, nlen);
        if (o < 0) {
            /* Only the name is shown: "--admin-tokn=SECRET" must not leak the value. */
            char nm[80];
            snprintf(nm, sizeof(nm), "%.*s", (int)(nlen < 64 ? nlen : 64), name);
            return fail(st, "unknown flag --%s (see --help)", shown(nm, show));
        }
        const char *val;
        if (eq != NULL) {
            val = eq + 1;
            if (*val == '\0')
                return fail(st, "--%s: empty value", opts[o].name);
        } else {
            /* A following "--x" is taken as the next flag, not as this one's value; values
             * that really start with "--" can use the --flag=value form. */
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return fail(st, "--%s needs a value (--%s %s)", opts[o].name, opts[o].name,
                            opts[o].arg);
            val = argv[++i];
            if (*val == '\0')
                return fail(st, "--%s: empty value", opts[o].name);
        }
        if (opts[o].kind == OPT_CIDR)
            st->cidr_args[st->n_cidr_args++] = val;
        st->raw[o].val = val;
        st->raw[o].from_env = 0;
    }
    return SB_OK;
}

/* Step 2: the environment fills what the command line left unset. */
static void collect_env(parse_state *st)
{
    for (int i = 0; i < O_COUNT; i++) {
        if (st->raw[i].val != NULL)
            continue;
        char env[64];
        env_name(&opts[i], env, sizeof(env));
        const char *v = getenv(env);
        if (v != NULL && *v != '\0') {
            st->raw[i].val = v;
            st->raw[i].from_env = 1;
        }
    }
}

/* Digits only, with an optional leading '-': strtol alone would also take " 5" and "+5". */
static int parse_number(parse_state *st, int i, long *out)
{
    const char *v = st->raw[i].val;
    const opt_def *d = &opts[i];
    const char *p = v[0] == '-' ? v + 1 : v;
    int digits = *p != '\0';
    for (; *p != '\0'; p++)
        if (*p < '0' || *p > '9')
            digits = 0;
    if (!digits || sb_parse_long(v, d->min, d->max, out) != SB_OK) {
        char src[64], show[80];
        return fail(st, "invalid value for %s: \"%s\" (expected an integer from %ld to %ld)",
                    source_name(st, i, src, sizeof(src)), shown(v, show), d->min, d->max);
    }
    return SB_OK;
}

/* Opens |path| to prove it is readable now, rather than failing later at handshake time.
 * Nothing is read: the path may be a FIFO or a /dev/fd entry that can be read only once. */
static int check_readable(parse_state *st, int i, const char *path)
{
    char src[64], show[80];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1)
        return fail(st, "cannot read %s %s: %s", source_name(st, i, src, sizeof(src)),
                    shown(path, show), strerror(errno));
    struct stat sb;
    int isdir = fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode);
    close(fd);
    if (isdir)
        return fail(st, "cannot read %s %s: is a directory", source_name(st, i, src, sizeof(src)),
                    shown(path, show));
    return SB_OK;
}

/* Shape only (the URL's details are sb_redis_url_check's job). The URL is never echoed:
 * it may carry a password. */
static int check_redis_url(parse_state *st, int i, const char *url)
{
    int ok = 0;
    if (strncmp(url, "redis://", 8) == 0)
        ok = url[8] != '\0' && url[8] != '/' && url[8] != '?';
    else if (strncmp(url, "unix://", 7) == 0)
        ok = url[7] == '/' && url[8] != '\0' && url[8] != '?';
    else if (strncmp(url, "redis+sentinel://", 17) == 0)
        ok = url[17] != '\0' && url[17] != '/' && strchr(url + 17, '/') != NULL;
    else if (strncmp(url, "redis+cluster://", 16) == 0)
        ok = url[16] != '\0' && url[16] != '/' && url[16] != '?';
    for (const char *p = url; ok && *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            ok = 0;
    if (!ok) {
        char src[64];
        return fail(st,
                    "invalid value for %s: expected redis://[[user]:password@]host[:port][/db], "
                    "redis+cluster://[[user]:password@]host:port[,host:port...], "
                    "redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name "
                    "or unix:///path.sock",
                    source_name(st, i, src, sizeof(src)));
    }
    return SB_OK;
}

static int add_cidr(parse_state *st, sb_config *cfg, int i, const char *s, size_t len)
{
    char buf[128], src[64], show[80];
    /* Trim blanks around list items: "10.0.0.0/8, fd00::/8" is a natural way to write it. */
    while (len > 0 && (*s == ' ' || *s == '\t'))
        s++, len--;
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0)
        return fail(st, "invalid value for %s: empty CIDR in list",
                    source_name(st, i, src, sizeof(src)));
    if (len >= sizeof(buf)) {
        snprintf(buf, sizeof(buf), "%.*s", (int)(sizeof(buf) - 1), s);
        return fail(st, "invalid value for %s: \"%s\" (expected a CIDR such as 10.0.0.0/8)",
                    source_name(st, i, src, sizeof(src)), shown(buf, show));
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    sb_cidr c;
    if (sb_cidr_parse(buf, &c) != SB_OK)
        return fail(st, "invalid value for %s: \"%s\" (expected a CIDR such as 10.0.0.0/8%s)",
                    source_name(st, i, src, sizeof(src)), shown(buf, show),
                    strchr(buf, ',') != NULL ? "; one per flag" : "");
    cfg->allow_upstream =
        sb_realloc(cfg->allow_upstream, (cfg->n_allow_upstream + 1) * sizeof(*cfg->allow_upstream));
    cfg->allow_upstream[cfg->n_allow_upstream++] = c;
    return SB_OK;
}

static int apply_cidrs(parse_state *st, sb_config *cfg)
{
    int i = O_ALLOW_UPSTREAM;
    if (st->raw[i].val == NULL)
        return SB_OK;
    if (!st->raw[i].from_env) {
        /* Each flag holds exactly one CIDR: a comma here is a mistake, not a list. */
        for (size_t k = 0; k < st->n_cidr_args; k++)
            if (add_cidr(st, cfg, i, st->cidr_args[k], strlen(st->cidr_args[k])) != SB_OK)
                return SB_ERR_INVALID;
        return SB_OK;
    }
    const char *p = st->raw[i].val;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (add_cidr(st, cfg, i, p, len) != SB_OK)
            return SB_ERR_INVALID;
        if (comma == NULL)
            return SB_OK;
        p = comma + 1;
    }
}

/* A token travels in "Authorization: Bearer TOKEN": whitespace or control bytes in it
 * could never be matched reliably, so they are refused rather than silently trimmed. */
static int check_token(parse_state *st, int i, const char *tok)
{
    char src[64];
    if (*tok == '\0')
        return fail(st, "%s is empty", source_name(st, i, src, sizeof(src)));
    for (const unsigned char *p = (const unsigned char *)tok; *p != '\0'; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return fail(st,
                        "the admin token from %s contains whitespace, control or non-ASCII "
                        "characters",
                        source_name(st, i, src, sizeof(src)));
    if (strlen(tok) > TOKEN_FILE_MAX)
        return fail(st, "the admin token from %s is longer than %d bytes",
                    source_name(st, i, src, sizeof(src)), TOKEN_FILE_MAX);
    return SB_OK;
}

/* Reads the admin token from a file into a new string in |*out|. */
static int read_token_file(parse_state *st, int i, const char *path, char **out)
{
    char src[64], show[80];
    source_name(st, i, src, sizeof(src));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return fail(st, "cannot read %s %s: %s", src, shown(path, show), strerror(errno));
    char *buf = sb_malloc(TOKEN_FILE_MAX + 2);
    size_t n = 0;
    int rc = SB_OK;
    for (;;) {
        ssize_t r = read(fd, buf + n, TOKEN_FILE_MAX + 1 - n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            rc = fail(st, "cannot read %s %s: %s", src, shown(path, show), strerror(errno));
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > TOKEN_FILE_MAX) {
            rc = fail(st, "%s %s is larger than %d bytes: not a token file", src, shown(path, show),
                      TOKEN_FILE_MAX);
            break;
        }
    }
    close(fd);
    if (rc == SB_OK) {
        while (n > 0 && isspace((unsigned char)buf[n - 1]))
            n--;
        buf[n] = '\0';
        if (n == 0)
            rc = fail(st, "%s %s is empty", src, shown(path, show));
        else if (memchr(buf, '\0', n) != NULL)
            rc = fail(st, "the admin token in %s %s contains a NUL byte", src, shown(path, show));
        else
            rc = check_token(st, i, buf);
    }
    if (rc == SB_OK) {
        *out = sb_strdup(buf);
    }
    OPENSSL_cleanse(buf, TOKEN_FILE_MAX + 2);
    sb_free(buf);
    return rc;
}

/* The admin token: the command line (token or file) wins over the environment (token or
 * file). Giving both a token and a file at the same level is ambiguous and refused. */
static int apply_admin_token(parse_state *st, sb_config *cfg)
{
    const raw_value *tok = &st->raw[O_ADMIN_TOKEN];
    const raw_value *file = &st->raw[O_ADMIN_TOKEN_FILE];
    int use_tok = tok->val != NULL && !tok->from_env;
    int use_file = file->val != NULL && !file->from_env;
    if (use_tok && use_file)
        return fail(st, "--admin-token and --admin-token-file are mutually exclusive");
    if (!use_tok && !use_file) {
        use_tok = tok->val != NULL;
        use_file = file->val != NULL;
        if (use_tok && use_file)
            return fail(st, "SWITCHBOARD_ADMIN_TOKEN and SWITCHBOARD_ADMIN_TOKEN_FILE are both "
                            "set: use one");
    }
    if (use_tok) {
        if (check_token(st, O_ADMIN_TOKEN, tok->val) != SB_OK)
            return SB_ERR_INVALID;
        cfg->admin_token = sb_strdup(tok->val);
        return SB_OK;
    }
    if (use_file)
        return read_token_file(st, O_ADMIN_TOKEN_FILE, file->val, &cfg->admin_token);
    return fail(st, "no admin token: pass --admin-token, --admin-token-file or set "
                    "SWITCHBOARD_ADMIN_TOKEN");
}

static int apply_one(parse_state *st, sb_config *cfg, int i)
{
    const opt_def *d = &opts[i];
    const char *v = st->raw[i].val;
    char src[64], show[80];
    char **strp = (char **)((char *)cfg + d->off);
    long n;
    char host[256];
    int port;

    switch (d->kind) {
    case OPT_HOSTPORT:
        if (sb_config_split_hostport(v, host, sizeof(host), &port) != SB_OK)
            return fail(st,
                        "invalid value for %s: \"%s\" (expected HOST:PORT or [IPv6]:PORT, "
                        "port 1..65535)",
                        source_name(st, i, src, sizeof(src)), shown(v, show));
        break;
    case OPT_FILE:
        if (check_readable(st, i, v) != SB_OK)
            return SB_ERR_INVALID;
        break;
    case OPT_REDIS:
        if (check_redis_url(st, i, v) != SB_OK)
            return SB_ERR_INVALID;
        break;
    case OPT_INT:
        if (parse_number(st, i, &n) != SB_OK)
            return SB_ERR_INVALID;
        *(int *)((char *)cfg + d->off) = (int)n;
        return SB_OK;
    case OPT_SIZE:
        if (parse_number(st, i, &n) != SB_OK)
            return SB_ERR_INVALID;
        *(size_t *)((char *)cfg + d->off) = (size_t)n;
        return SB_OK;
    case OPT_LOGFMT:
        if (strcmp(v, "json") == 0)
            cfg->log_json = 1;
        else if (strcmp(v, "text") == 0)
            cfg->log_json = 0;
        else
            return fail(st, "invalid value for %s: \"%s\" (expected json or text)",
                        source_name(st, i, src, sizeof(src)), shown(v, show));
        return SB_OK;
    case OPT_CIDR:
    case OPT_TOKEN:
    case OPT_TOKEN_FILE:
        return SB_OK; /* handled as a whole in apply_cidrs / apply_admin_token */
    }
    sb_free(*strp);
    *strp = sb_strdup(v);
    return SB_OK;
}

/* TLS needs all three of listen, cert and key; a cert or key alone is a half-finished
 * TLS setup that would otherwise be silently ignored. */
static int check_tls(parse_state *st, const sb_config *cfg)
{
    char src[64];
    if (cfg->tls_listen != NULL) {
        if (cfg->tls_cert == NULL || cfg->tls_key == NULL)
            return fail(st, "%s requires both --tls-cert and --tls-key",
                        source_name(st, O_TLS_LISTEN, src, sizeof(src)));
        if (strcmp(cfg->tls_listen, cfg->listen) == 0)
            return fail(st, "--tls-listen and --listen are both %s: use two addresses",
                        cfg->listen);
    } else if (cfg->tls_cert != NULL || cfg->tls_key != NULL) {
        int i = cfg->tls_cert != NULL ? O_TLS_CERT : O_TLS_KEY;
        return fail(st, "%s given without --tls-listen", source_name(st, i, src, sizeof(src)));
    }
    return SB_OK;
}

/* --upstream-ca must hold at least one PEM certificate: a wrong file (a key, a DER
 * certificate, an empty file) would otherwise only show as tls_error on every https push.
 * Each worker loads the file again when it makes its TLS context, so it must stay there. */
static int check_upstream_ca(parse_state *st, const sb_config *cfg)
{
    if (cfg->upstream_ca == NULL)
        return SB_OK;
    char src[64], show[80];
    source_name(st, O_UPSTREAM_CA, src, sizeof(src));
    FILE *fp = fopen(cfg->upstream_ca, "re");
    if (fp == NULL)
        return fail(st, "cannot read %s %s: %s", src, shown(cfg->upstream_ca, show),
                    strerror(errno));
    int n = 0;
    X509 *x;
    while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL) {
        X509_free(x);
        n++;
    }
    fclose(fp);
    ERR_clear_error(); /* the loop ends on "no start line": not an error once one was read */
    if (n == 0)
        return fail(st, "%s %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", src,
                    shown(cfg->upstream_ca, show));
    return SB_OK;
}

int sb_config_parse(sb_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    /* --help wins wherever it stands, so "switchboard --threads x --help" still helps. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            fflush(stdout);
            exit(0);
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("switchboard %s\n", SB_VERSION);
            fflush(stdout);
            exit(0);
        }
    }

    set_defaults(cfg);
    if (errlen > 0)
        err[0] = '\0';
    parse_state st;
    memset(&st, 0, sizeof(st));
    st.err = err;
    st.errlen = errlen;
    st.cidr_args = sb_calloc(argc > 0 ? (size_t)argc : 1, sizeof(*st.cidr_args));

    int rc = collect_argv(&st, argc, argv);
    if (rc == SB_OK) {
        collect_env(&st);
        for (int i = 0; i < O_COUNT && rc == SB_OK; i++)
            if (st.raw[i].val != NULL)
                rc = apply_one(&st, cfg, i);
    }
    if (rc == SB_OK)
        rc = apply_cidrs(&st, cfg);
    if (rc == SB_OK)
        rc = check_tls(&st, cfg);
    if (rc == SB_OK)
        rc = check_upstream_ca(&st, cfg);
    if (rc == SB_OK)
        rc = apply_admin_token(&st, cfg);
    sb_free(st.cidr_args);
    return rc;
}

void sb_config_clear(sb_config *cfg)
{
    sb_free(cfg->listen);
    sb_free(cfg->tls_listen);
    sb_free(cfg->tls_cert);
    sb_free(cfg->tls_key);
    sb_free(cfg->upstream_ca);
    sb_free(cfg->redis_url);
    if (cfg->admin_token != NULL) {
        OPENSSL_cleanse(cfg->admin_token, strlen(cfg->admin_token));
        sb_free(cfg->admin_token);
    }
    sb_free(cfg->allow_upstream);
    memset(cfg, 0, sizeof(*cfg));
}

/* Host names: letters, digits, '.', '-', '_' (the last for container and compose names). */
static int valid_name(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* Bracketed IPv6 literal content: hex digits, ':' and '.' (embedded IPv4), with an
 * optional "%zone" of name characters. getaddrinfo has the final word. */
static int valid_v6(const char *s, size_t n)
{
    const char *pct = memchr(s, '%', n);
    size_t addr_len = pct ? (size_t)(pct - s) : n;
    if (addr_len < 2 || memchr(s, ':', addr_len) == NULL)
        return 0;
    for (size_t i = 0; i < addr_len; i++)
        if (!isxdigit((unsigned char)s[i]) && s[i] != ':' && s[i] != '.')
            return 0;
    return pct == NULL || valid_name(pct + 1, n - addr_len - 1);
}

int sb_config_split_hostport(const char *s, char *host, size_t hostcap, int *port)
{
    const char *h, *colon;
    size_t hlen;
    if (s == NULL)
        return SB_ERR_INVALID;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return SB_ERR_INVALID;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
        if (!valid_v6(h, hlen))
            return SB_ERR_INVALID;
    } else {
        colon = strchr(s, ':');
        /* A second colon means an unbracketed IPv6 literal: ambiguous, refused. */
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return SB_ERR_INVALID;
        h = s;
        hlen = (size_t)(colon - s);
        if (!valid_name(h, hlen))
            return SB_ERR_INVALID;
    }
    const char *p = colon + 1;
    size_t plen = strlen(p);
    long v = 0;
    if (plen == 0 || plen > 5)
        return SB_ERR_INVALID;
    for (size_t i = 0; i < plen; i++) {
        if (p[i] < '0' || p[i] > '9')
            return SB_ERR_INVALID;
        v = v * 10 + (p[i] - '0');
    }
    if (v < 1 || v > 65535 || hlen + 1 > hostcap)
        return SB_ERR_INVALID;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return SB_OK;
}
