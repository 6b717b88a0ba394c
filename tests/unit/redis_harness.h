/*
 * redis_harness.h — real redis-server processes and loop helpers for unit tests
 * (included by test_redis.c, test_registry.c, test_auth.c and test_queue.c; header-only
 * so that every test binary still builds from its one .c file).
 *
 * test_redis_start() forks and execs `redis-server --port N --save '' --appendonly no
 * --dir TMP` (plus extra arguments), waits until it answers PING and records it; each
 * server dies with SIGKILL in test_redis_stop(), in an atexit() backstop, and — should
 * the test binary itself crash — through PR_SET_PDEATHSIG. Temporary directories are
 * removed with their contents.
 */
#ifndef SB_TEST_REDIS_HARNESS_H
#define SB_TEST_REDIS_HARNESS_H

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/util.h"

typedef struct test_redis {
    pid_t pid;
    int port;
    char dir[64];
    char sock[128]; /* unix socket path when started with one */
    char url[192];
} test_redis;

#define TEST_REDIS_MAX 16
/* Every server and directory started, so a failed test (cmocka longjmps out of it)
 * still has them removed by a teardown or at exit. */
static pid_t test_redis_pids[TEST_REDIS_MAX];
static char test_redis_dirs[TEST_REDIS_MAX][64];

static inline int test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* Kills every tracked server but |keep| (0: all) and removes the directories of the
 * servers killed (all directories when |keep| is 0 — |keep_dir| is spared). */
static inline void test_redis_kill_all_except(pid_t keep, const char *keep_dir)
{
    for (int i = 0; i < TEST_REDIS_MAX; i++) {
        if (test_redis_pids[i] > 0 && test_redis_pids[i] != keep) {
            kill(test_redis_pids[i], SIGCONT);
            kill(test_redis_pids[i], SIGKILL);
            waitpid(test_redis_pids[i], NULL, 0);
            test_redis_pids[i] = 0;
        }
        if (test_redis_dirs[i][0] != '\0' &&
            (keep_dir == NULL || strcmp(test_redis_dirs[i], keep_dir) != 0)) {
            nftw(test_redis_dirs[i], test_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
            test_redis_dirs[i][0] = '\0';
        }
    }
}

static inline void test_redis_kill_all(void)
{
    test_redis_kill_all_except(0, NULL);
}

static inline void test_redis_register_exit(void)
{
    static int registered;
    if (!registered) {
        atexit(test_redis_kill_all);
        registered = 1;
    }
}

static inline void test_redis_track(pid_t pid, int add)
{
    test_redis_register_exit();
    for (int i = 0; i < TEST_REDIS_MAX; i++) {
        if (add && test_redis_pids[i] == 0) {
            test_redis_pids[i] = pid;
            return;
        }
        if (!add && test_redis_pids[i] == pid) {
            test_redis_pids[i] = 0;
            return;
        }
    }
}

/* Creates |t|->dir (tracked for removal). 0 or -1. */
static inline int test_redis_mkdir(test_redis *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/sbtest-XXXXXX");
    if (mkdtemp(t->dir) == NULL)
        return -1;
    test_redis_register_exit();
    for (int i = 0; i < TEST_REDIS_MAX; i++) {
        if (test_redis_dirs[i][0] == '\0') {
            snprintf(test_redis_dirs[i], sizeof(test_redis_dirs[i]), "%s", t->dir);
            break;
        }
    }
    return 0;
}

/* Routes switchboard's log lines to stderr when SB_TEST_LOG is set, else nowhere. */
static inline void test_quiet_logs(void)
{
    if (getenv("SB_TEST_LOG") != NULL) {
        sb_log_init(0, 2);
        return;
    }
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    sb_log_init(0, fd);
}

/* A TCP port that was free a moment ago. */
static inline int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (fd == -1 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) == -1) {
        if (fd != -1)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static inline void test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* 1 when the server at |t| answers PING (TCP, or the unix socket when set). */
static inline int test_redis_pings(const test_redis *t, const char *password)
{
    struct timeval tv = {0, 200000};
    redisContext *c = t->sock[0] ? redisConnectUnixWithTimeout(t->sock, tv)
                                 : redisConnectWithTimeout("127.0.0.1", t->port, tv);
    int ok = 0;
    if (c != NULL && !c->err) {
        redisSetTimeout(c, tv);
        if (password != NULL) {
            redisReply *a = redisCommand(c, "AUTH %s", password);
            if (a != NULL)
                freeReplyObject(a);
        }
        redisReply *r = redisCommand(c, "PING");
        ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r != NULL)
            freeReplyObject(r);
    }
    if (c != NULL)
        redisFree(c);
    return ok;
}

/* Starts redis-server on |port| (0: a free one) with up to 8 |extra| arguments (NULL-
 * terminated, may be NULL), reusing |t|->dir when already set. |password|: what PING
 * needs to authenticate with, or NULL. Returns 0 when it answers within 5 s. */
static inline int test_redis_start_args(test_redis *t, int port, const char *const *extra,
                                        const char *password)
{
    if (t->dir[0] == '\0' && test_redis_mkdir(t) != 0)
        return -1;
    t->port = port > 0 ? port : test_free_port();
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", t->port);
    const char *argv[32] = {"redis-server", "--port", portstr, "--save", "",         "--appendonly",
                            "no",           "--dir",  t->dir,  "--bind", "127.0.0.1"};
    int argc = 11;
    for (int i = 0; extra != NULL && extra[i] != NULL && argc < 30; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == -1)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execvp("redis-server", (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    t->pid = pid;
    test_redis_track(pid, 1);
    snprintf(t->url, sizeof(t->url), "redis://127.0.0.1:%d", t->port);
    for (int i = 0; i < 250; i++) {
        if (test_redis_pings(t, password))
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            test_redis_track(pid, 0);
            t->pid = 0;
            return -1;
        }
        test_sleep_ms(20);
    }
    return -1;
}

static inline int test_redis_start(test_redis *t, int port)
{
    return test_redis_start_args(t, port, NULL, NULL);
}

/* Kills the server (SIGKILL: no chance to save anything) and reaps it. */
static inline void test_redis_kill(test_redis *t)
{
    if (t->pid > 0) {
        kill(t->pid, SIGCONT);
        kill(t->pid, SIGKILL);
        waitpid(t->pid, NULL, 0);
        test_redis_track(t->pid, 0);
        t->pid = 0;
    }
}

/* Kills the server and removes its directory. Safe to call twice. */
static inline void test_redis_stop(test_redis *t)
{
    test_redis_kill(t);
    if (t->dir[0] != '\0') {
        nftw(t->dir, test_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        for (int i = 0; i < TEST_REDIS_MAX; i++)
            if (strcmp(test_redis_dirs[i], t->dir) == 0)
                test_redis_dirs[i][0] = '\0';
        t->dir[0] = '\0';
    }
}

/* A cmocka group setup: quiet logs, SIGPIPE ignored, |t| started on a free port.
 * 0, or -1 when the server does not come up. */
static inline int test_redis_group_start(test_redis *t)
{
    test_quiet_logs();
    signal(SIGPIPE, SIG_IGN);
    return test_redis_start(t, 0) == 0 ? 0 : -1;
}

/* Runs |cmd| on a fresh synchronous connection; the reply (caller frees) or NULL. */
static inline redisReply *test_redis_cmd(const test_redis *t, const char *fmt, ...)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", t->port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* Empties every database of |t| (FLUSHALL). 0, or -1 when the server does not answer. */
static inline int test_redis_flushall(const test_redis *t)
{
    redisReply *r = test_redis_cmd(t, "FLUSHALL");
    if (r == NULL)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* Runs |base| until |cond|(|arg|) holds or |timeout_ms| passes; 1 if it holds. */
static inline int test_run_until(struct event_base *base, int (*cond)(void *), void *arg,
                                 int timeout_ms)
{
    uint64_t deadline = sb_now_mono_us() + (uint64_t)timeout_ms * 1000u;
    for (;;) {
        if (cond != NULL && cond(arg))
            return 1;
        if (sb_now_mono_us() >= deadline)
            return 0;
        event_base_loop(base, EVLOOP_NONBLOCK);
        test_sleep_ms(1);
    }
}

/* Runs |base| for |ms| milliseconds. */
static inline void test_run_for(struct event_base *base, int ms)
{
    test_run_until(base, NULL, NULL, ms);
}

/* ---- other instances: forked children that run their own loop ---- */

/* ---- the usual fixture: a loop and an sb_redis connected to the group's server ---- */

typedef struct test_fixture {
    struct event_base *base;
    sb_redis *r;
} test_fixture;

static inline int test_redis_is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

/* Empties |srv|, then makes a loop and an sb_redis connected to it (waits up to 3 s).
 * NULL when either fails. Release with test_fixture_free. */
static inline test_fixture *test_fixture_new(const test_redis *srv)
{
    if (test_redis_flushall(srv) != 0)
        return NULL;
    test_fixture *f = sb_calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->r = sb_redis_new(f->base, srv->url, NULL, NULL);
    if (!test_run_until(f->base, test_redis_is_up, f->r, 3000)) {
        sb_redis_free(f->r);
        event_base_free(f->base);
        sb_free(f);
        return NULL;
    }
    return f;
}

static inline void test_fixture_free(test_fixture *f)
{
    sb_redis_free(f->r);
    event_base_free(f->base);
    sb_free(f);
}

typedef struct test_child {
    pid_t pid;
    int to_child;   /* parent writes */
    int from_child; /* parent reads */
} test_child;

/* Forks a child that waits for one line from the parent (see test_child_send), calls
 * |body|(line, |in|, |out|, |arg|) and exits with its return value. Fork before the
 * parent creates any event_base of the test: the child must share no loop with it. */
static inline int test_child_start(test_child *ch,
                                   int (*body)(const char *line, int in, int out, void *arg),
                                   void *arg)
{
    int down[2], up[2];
    if (pipe(down) == -1 || pipe(up) == -1)
        return -1;
    pid_t pid = fork();
    if (pid == -1)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(down[1]);
        close(up[0]);
        char line[512];
        size_t n = 0;
        while (n + 1 < sizeof(line)) {
            ssize_t k = read(down[0], line + n, 1);
            if (k <= 0)
                _exit(90);
            if (line[n] == '\n')
                break;
            n++;
        }
        line[n] = '\0';
        _exit(body(line, down[0], up[1], arg));
    }
    close(down[0]);
    close(up[1]);
    ch->pid = pid;
    ch->to_child = down[1];
    ch->from_child = up[0];
    return 0;
}

static inline void test_child_send(test_child *ch, const char *line)
{
    size_t n = strlen(line);
    if (write(ch->to_child, line, n) != (ssize_t)n || write(ch->to_child, "\n", 1) != 1)
        perror("test_child_send");
}

/* Reads one byte from |fd| within |timeout_ms|: the byte, or -1. */
static inline int test_read_byte(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1)
        return -1;
    unsigned char b;
    return read(fd, &b, 1) == 1 ? b : -1;
}

/* Waits up to |timeout_ms| for the child; its exit status, or -1 (then it is killed). */
static inline int test_child_wait(test_child *ch, int timeout_ms)
{
    int status = 0;
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        pid_t p = waitpid(ch->pid, &status, WNOHANG);
        if (p == ch->pid) {
            close(ch->to_child);
            close(ch->from_child);
            ch->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        test_sleep_ms(10);
    }
    kill(ch->pid, SIGKILL);
    waitpid(ch->pid, NULL, 0);
    close(ch->to_child);
    close(ch->from_child);
    ch->pid = 0;
    return -1;
}

/* The cmocka group setup and teardown (one server |srv|, a static test_redis) and the
 * per-test setup and teardown (a fixture on it), for a file that needs nothing more. */
#define TEST_REDIS_FIXTURE_FUNCS(srv)                                                              \
    static int group_setup(void **state)                                                           \
    {                                                                                              \
        (void)state;                                                                               \
        return test_redis_group_start(&(srv));                                                     \
    }                                                                                              \
    static int group_teardown(void **state)                                                        \
    {                                                                                              \
        (void)state;                                                                               \
        test_redis_stop(&(srv));                                                                   \
        return 0;                                                                                  \
    }                                                                                              \
    static int setup(void **state)                                                                 \
    {                                                                                              \
        *state = test_fixture_new(&(srv));                                                         \
        return *state != NULL ? 0 : -1;                                                            \
    }                                                                                              \
    static int teardown(void **state)                                                              \
    {                                                                                              \
        test_fixture_free(*state);                                                                 \
        return 0;                                                                                  \
    }

#endif
