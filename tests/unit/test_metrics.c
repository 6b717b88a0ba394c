/*
 * test_metrics.c — the metrics registry (metrics.h, SPEC §5.1).
 *
 * Counts must be exact however many threads count at once (also with more threads than
 * shards), the exposition must be valid text format 0.0.4 (checked line by line by a
 * small parser here), label values must be escaped, histograms cumulative with
 * +Inf == _count and an exact _sum, and cardinality bounded whatever callers pass.
 * Every test starts from sb_metrics_test_reset().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <event2/buffer.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/metrics.h"
#include "switchboard/util.h"

/* ---- helpers: render, validate, look up ---- */

static char *render(void)
{
    struct evbuffer *b = evbuffer_new();
    sb_metrics_render(b, NULL);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

static int is_name_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}

static int is_name_char(int c)
{
    return isalnum(c) || c == '_' || c == ':';
}

/* 1 if |line| (without its newline) is a valid sample line of format 0.0.4. */
static int valid_sample(const char *line)
{
    const char *p = line;
    if (!is_name_start((unsigned char)*p))
        return 0;
    while (is_name_char((unsigned char)*p))
        p++;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            if (!is_name_start((unsigned char)*p))
                return 0;
            while (is_name_char((unsigned char)*p))
                p++;
            if (*p++ != '=' || *p++ != '"')
                return 0;
            while (*p != '"') {
                if (*p == '\0' || *p == '\n')
                    return 0;
                if (*p == '\\') {
                    p++;
                    if (*p != '\\' && *p != '"' && *p != 'n')
                        return 0;
                }
                p++;
            }
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                return 0;
        }
        p++;
    }
    if (*p++ != ' ')
        return 0;
    if (strcmp(p, "+Inf") == 0)
        return 1;
    char *end;
    strtod(p, &end);
    return end != p && *end == '\0';
}

/* Checks every line of |text|: "# HELP name ...", "# TYPE name type" (before any sample
 * of that name) or a valid sample. */
static void assert_valid_exposition(const char *text)
{
    char *copy = strdup(text);
    char typed[64][96];
    int ntyped = 0;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], type[32];
            assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            for (int i = 0; i < ntyped; i++)
                assert_string_not_equal(typed[i], name); /* one TYPE per family */
            assert_true(ntyped < 64);
            snprintf(typed[ntyped++], sizeof(typed[0]), "%s", name);
            continue;
        }
        if (!valid_sample(line))
            fail_msg("invalid sample line: %s", line);
        int found = 0;
        for (int i = 0; i < ntyped && !found; i++) {
            size_t n = strlen(typed[i]);
            found = strncmp(line, typed[i], n) == 0 &&
                    (line[n] == '{' || line[n] == ' ' || line[n] == '_');
        }
        if (!found)
            fail_msg("sample before its # TYPE: %s", line);
    }
    free(copy);
}

/* The value of the sample whose name and labels are exactly |series|; fails if absent. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    fail_msg("series not found: %s", series);
    return -1;
}

static int has_series(const char *text, const char *series)
{
    char key[512];
    snprintf(key, sizeof(key), "\n%s ", series);
    return strstr(text, key) != NULL;
}

static int setup(void **state)
{
    sb_metrics_test_reset();
    return 0;
}

/* ---- tests ---- */

static void test_fresh_registry_has_every_fixed_series(void **state)
{
    char *t = render();
    assert_valid_exposition(t);
    static const char *const families[] = {
        "switchboard_messages_total",
        "switchboard_poll_fallbacks_total",
        "switchboard_push_duration_seconds",
        "switchboard_queue_depth",
        "switchboard_queue_oldest_age_seconds",
        "switchboard_inbox_leases_total",
        "switchboard_inbox_acks_total",
        "switchboard_inbox_redeliveries_total",
        "switchboard_dead_letters_total",
        "switchboard_drained_total",
        "switchboard_endpoints",
        "switchboard_circuits_open",
        "switchboard_redis_up",
        "switchboard_http_requests_total",
        "switchboard_connections",
        "switchboard_build_info",
    };
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        char type[128];
        snprintf(type, sizeof(type), "# TYPE %s ", families[i]);
        if (strstr(t, type) == NULL)
            fail_msg("no # TYPE line for %s", families[i]);
    }
    /* every reason of the closed list is pre-initialised, and nothing else */
    int reasons = 0;
    for (int r = SB_REASON_NONE + 1; r < SB_REASON__COUNT; r++) {
        char s[128];
        snprintf(s, sizeof(s), "switchboard_poll_fallbacks_total{reason=\"%s\"}",
                 sb_reason_name((sb_reason)r));
        assert_true(value_of(t, s) == 0);
        reasons++;
    }
    int lines = 0;
    for (const char *p = strstr(t, "\nswitchboard_poll_fallbacks_total{"); p != NULL;
         p = strstr(p + 1, "\nswitchboard_poll_fallbacks_total{"))
        lines++;
    assert_int_equal(lines, reasons);
    assert_int_equal(reasons, 22);
    assert_true(value_of(t, "switchboard_messages_total{kind=\"chat\",mode=\"push\"}") == 0);
    assert_true(value_of(t, "switchboard_messages_total{kind=\"delegation\",mode=\"rejected\"}") ==
                0);
    assert_true(value_of(t, "switchboard_dead_letters_total{reason=\"max_deliveries\"}") == 0);
    assert_true(value_of(t, "switchboard_dead_letters_total{reason=\"expired\"}") == 0);
    assert_true(value_of(t, "switchboard_push_duration_seconds_count") == 0);
    assert_true(value_of(t, "switchboard_queue_depth") == 0);
    assert_true(value_of(t, "switchboard_queue_oldest_age_seconds") == 0);
    assert_true(value_of(t, "switchboard_build_info{version=\"" SB_VERSION "\"}") == 1);
    /* no server: nothing connected, Redis follows the (unstarted) sync replica */
    assert_true(value_of(t, "switchboard_redis_up") == 0);
    assert_true(value_of(t, "switchboard_connections") == 0);
    free(t);
}

#define NTHREADS 8
#define PER_THREAD 50000

static void *count_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        sb_metrics_delivery(SB_KIND_CHAT, "push", SB_REASON_NONE);
        sb_metrics_delivery(id % 2 ? SB_KIND_DELEGATION : SB_KIND_CHAT, "poll",
                            SB_REASON_CONNECT_REFUSED);
        sb_metrics_http_request("/workspaces/{ws}/a2a", 200, 1500);
        sb_metrics_push_observe((uint64_t)(i % 4) * 1000000u); /* 0 s, 1 s, 2 s, 3 s */
        sb_metrics_inbox_leased(i % 5 == 0 ? 2 : 1);
        sb_metrics_dead_letters("expired", 2);
    }
    return NULL;
}

static void test_exact_counts_under_threads(void **state)
{
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, count_worker, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    char *t = render();
    assert_valid_exposition(t);
    const double total = (double)NTHREADS * PER_THREAD;
    assert_true(value_of(t, "switchboard_messages_total{kind=\"chat\",mode=\"push\"}") == total);
    assert_true(value_of(t, "switchboard_messages_total{kind=\"chat\",mode=\"poll\"}") ==
                total / 2);
    assert_true(value_of(t, "switchboard_messages_total{kind=\"delegation\",mode=\"poll\"}") ==
                total / 2);
    assert_true(value_of(t, "switchboard_poll_fallbacks_total{reason=\"connect_refused\"}") ==
                total);
    assert_true(value_of(t, "switchboard_poll_fallbacks_total{reason=\"http_404\"}") == 0);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"/workspaces/{ws}/"
                            "a2a\",code=\"200\"}") == total);
    assert_true(value_of(t, "switchboard_push_duration_seconds_count") == total);
    /* sum: a quarter each of 0, 1, 2 and 3 seconds */
    assert_true(value_of(t, "switchboard_push_duration_seconds_sum") == total / 4 * 6);
    assert_true(value_of(t, "switchboard_inbox_leases_total") == total);
    assert_true(value_of(t, "switchboard_inbox_redeliveries_total") == total / 5);
    assert_true(value_of(t, "switchboard_dead_letters_total{reason=\"expired\"}") == total * 2);
    free(t);
}

#define MANY_THREADS 80 /* more than the shards: some threads share one */

static void *few_counts(void *arg)
{
    for (int i = 0; i < 1000; i++)
        sb_metrics_drained();
    return NULL;
}

static void test_more_threads_than_shards_stays_exact(void **state)
{
    pthread_t th[MANY_THREADS];
    for (int i = 0; i < MANY_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, few_counts, NULL), 0);
    for (int i = 0; i < MANY_THREADS; i++)
        pthread_join(th[i], NULL);
    char *t = render();
    assert_true(value_of(t, "switchboard_drained_total") == MANY_THREADS * 1000.0);
    free(t);
    /* counts of threads that exited survive a reset only as zeros */
    sb_metrics_test_reset();
    t = render();
    assert_true(value_of(t, "switchboard_drained_total") == 0);
    free(t);
}

static void test_histogram_buckets_cumulative_and_exact(void **state)
{
    /* le is "<=": exactly 1 ms falls in the 0.001 bucket, 1 µs more does not */
    static const uint64_t obs[] = {0,       999,       1000,      1001,      2500,       100000,
                                   1000000, 299999999, 300000000, 300000001, 3600000000u};
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++) {
        sb_metrics_push_observe(obs[i]);
        sum += obs[i];
    }
    char *t = render();
    assert_valid_exposition(t);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"0.001\"}") == 3);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"0.0025\"}") == 5);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"0.1\"}") == 6);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"1\"}") == 7);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"300\"}") == 9);
    assert_true(value_of(t, "switchboard_push_duration_seconds_bucket{le=\"+Inf\"}") == 11);
    assert_true(value_of(t, "switchboard_push_duration_seconds_count") == 11);
    assert_true(fabs(value_of(t, "switchboard_push_duration_seconds_sum") - (double)sum / 1e6) <
                1e-6);

    /* every histogram: le ascending, counts non-decreasing, +Inf last and == _count */
    static const char *const hists[] = {"switchboard_push_duration_seconds",
                                        "switchboard_redis_command_duration_seconds"};
    sb_metrics_redis_command(150);
    sb_metrics_redis_command(20000000);
    free(t);
    t = render();
    for (size_t h = 0; h < 2; h++) {
        char prefix[128];
        snprintf(prefix, sizeof(prefix), "\n%s_bucket{le=\"", hists[h]);
        double last_le = -1, last_n = -1;
        int saw_inf = 0;
        for (const char *p = strstr(t, prefix); p != NULL; p = strstr(p + 1, prefix)) {
            const char *le = p + strlen(prefix);
            const char *val = strstr(le, "} ") + 2;
            double n = strtod(val, NULL);
            assert_false(saw_inf);
            if (strncmp(le, "+Inf\"", 5) == 0) {
                saw_inf = 1;
            } else {
                double v = strtod(le, NULL);
                assert_true(v > last_le);
                last_le = v;
            }
            assert_true(n >= last_n);
            last_n = n;
        }
        assert_true(saw_inf);
        char count[128];
        snprintf(count, sizeof(count), "%s_count", hists[h]);
        assert_true(value_of(t, count) == last_n);
    }
    assert_true(value_of(t, "switchboard_redis_command_duration_seconds_bucket{le=\"0.00025\"}") ==
                1);
    assert_true(value_of(t, "switchboard_redis_command_duration_seconds_count") == 2);
    free(t);
}

static void test_label_values_are_escaped(void **state)
{
    struct evbuffer *b = evbuffer_new();
    sb_metrics_escape_label(b, "a\"b\\c\nd");
    size_t n = evbuffer_get_length(b);
    char out[64];
    assert_true(n < sizeof(out));
    evbuffer_remove(b, out, n);
    out[n] = '\0';
    assert_string_equal(out, "a\\\"b\\\\c\\nd");
    evbuffer_free(b);

    sb_metrics_http_request("/we\"ird\\route\n", 201, 10);
    char *t = render();
    assert_valid_exposition(t);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"/we\\\"ird\\\\route\\n\","
                            "code=\"201\"}") == 1);
    free(t);
}

static void test_route_and_code_labels_are_bounded(void **state)
{
    /* Callers pass static patterns; even 200 distinct strings make at most
     * SB_METRICS_MAX_ROUTES labels, the excess counted under "other". */
    static char names[200][16];
    for (int i = 0; i < 200; i++) {
        snprintf(names[i], sizeof(names[i]), "/r%d", i);
        sb_metrics_http_request(names[i], 200, 1);
    }
    sb_metrics_http_request(NULL, 404, 1);
    sb_metrics_http_request("/healthz", 299, 1); /* no reason phrase: its class */
    sb_metrics_http_request("/healthz", 42, 1);  /* outside 100..599 */
    sb_metrics_http_request("/healthz", 503, 1);
    char *t = render();
    assert_valid_exposition(t);
    int labels = 0;
    for (const char *p = strstr(t, "\nswitchboard_http_requests_total{"); p != NULL;
         p = strstr(p + 1, "\nswitchboard_http_requests_total{"))
        labels++;
    /* the first /rN routes fill every slot but "unmatched" and "other"; the rest and
     * "/healthz" (the table is full by then) land in "other" under four codes */
    assert_int_equal(labels, (SB_METRICS_MAX_ROUTES - 2) + 1 + 4);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"unmatched\",code=\"404\"}") ==
                1);
    double other = value_of(t, "switchboard_http_requests_total{route=\"other\",code=\"200\"}");
    assert_true(other == 200 - (SB_METRICS_MAX_ROUTES - 2));
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"other\",code=\"2xx\"}") == 1);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"other\",code=\"other\"}") ==
                1);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"other\",code=\"503\"}") == 1);
    assert_true(value_of(t, "switchboard_http_requests_total{route=\"/r0\",code=\"200\"}") == 1);
    assert_false(has_series(t, "switchboard_http_requests_total{route=\"/r199\",code=\"200\"}"));
    free(t);

    /* after a reset the same pattern pointer or an equal string share one label */
    sb_metrics_test_reset();
    char copy[32];
    snprintf(copy, sizeof(copy), "%s", "/registry/{ws}");
    sb_metrics_http_request("/registry/{ws}", 200, 1);
    sb_metrics_http_request(copy, 200, 1);
    t = render();
    assert_true(
        value_of(t, "switchboard_http_requests_total{route=\"/registry/{ws}\",code=\"200\"}") == 2);
    free(t);
}

static void test_unknown_inputs_are_not_counted(void **state)
{
    sb_metrics_delivery(SB_KIND_CHAT, "carrier-pigeon", SB_REASON_NONE);
    sb_metrics_delivery((sb_message_kind)7, "push", SB_REASON_NONE);
    sb_metrics_delivery(SB_KIND_CHAT, NULL, SB_REASON__COUNT);
    sb_metrics_dead_letters("lost", 3);
    sb_metrics_dead_letters(NULL, 3);
    sb_metrics_dead_letters("expired", 0);
    char *t = render();
    assert_valid_exposition(t);
    static const char *const zero[] = {
        "switchboard_messages_total{kind=\"chat\",mode=\"push\"}",
        "switchboard_messages_total{kind=\"chat\",mode=\"poll\"}",
        "switchboard_messages_total{kind=\"chat\",mode=\"rejected\"}",
        "switchboard_messages_total{kind=\"delegation\",mode=\"push\"}",
        "switchboard_dead_letters_total{reason=\"expired\"}",
        "switchboard_dead_letters_total{reason=\"max_deliveries\"}",
    };
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
        assert_true(value_of(t, zero[i]) == 0);
    assert_null(strstr(t, "carrier-pigeon"));
    assert_null(strstr(t, "lost"));
    free(t);

    /* a pre-push reason counts as a fallback even for a message that was rejected */
    sb_metrics_delivery(SB_KIND_DELEGATION, "rejected", SB_REASON_NO_ENDPOINT);
    t = render();
    assert_true(value_of(t, "switchboard_messages_total{kind=\"delegation\",mode=\"rejected\"}") ==
                1);
    assert_true(value_of(t, "switchboard_poll_fallbacks_total{reason=\"no_endpoint\"}") == 1);
    free(t);
}

static void test_inbox_counters(void **state)
{
    sb_metrics_inbox_leased(1);
    sb_metrics_inbox_leased(3);
    sb_metrics_inbox_acked();
    sb_metrics_dead_letters("max_deliveries", 1);
    sb_metrics_drained();
    char *t = render();
    assert_true(value_of(t, "switchboard_inbox_leases_total") == 2);
    assert_true(value_of(t, "switchboard_inbox_redeliveries_total") == 1);
    assert_true(value_of(t, "switchboard_inbox_acks_total") == 1);
    assert_true(value_of(t, "switchboard_dead_letters_total{reason=\"max_deliveries\"}") == 1);
    assert_true(value_of(t, "switchboard_drained_total") == 1);
    free(t);
}

static void test_queue_gauges(void **state)
{
    sb_metrics_set_queue(17, sb_now_wall_ms() - 90000);
    char *t = render();
    assert_true(value_of(t, "switchboard_queue_depth") == 17);
    double age = value_of(t, "switchboard_queue_oldest_age_seconds");
    assert_true(age >= 90 && age < 120);
    free(t);
    sb_metrics_set_queue(0, 0); /* empty queue */
    t = render();
    assert_true(value_of(t, "switchboard_queue_depth") == 0);
    assert_true(value_of(t, "switchboard_queue_oldest_age_seconds") == 0);
    free(t);
    sb_metrics_set_queue(-4, sb_now_wall_ms() + 60000); /* nonsense stays sane */
    t = render();
    assert_true(value_of(t, "switchboard_queue_depth") == 0);
    assert_true(value_of(t, "switchboard_queue_oldest_age_seconds") == 0);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_fresh_registry_has_every_fixed_series, setup),
        cmocka_unit_test_setup(test_exact_counts_under_threads, setup),
        cmocka_unit_test_setup(test_more_threads_than_shards_stays_exact, setup),
        cmocka_unit_test_setup(test_histogram_buckets_cumulative_and_exact, setup),
        cmocka_unit_test_setup(test_label_values_are_escaped, setup),
        cmocka_unit_test_setup(test_route_and_code_labels_are_bounded, setup),
        cmocka_unit_test_setup(test_unknown_inputs_are_not_counted, setup),
        cmocka_unit_test_setup(test_inbox_counters, setup),
        cmocka_unit_test_setup(test_queue_gauges, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
