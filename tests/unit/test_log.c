/*
 * test_log.c — unit tests for log.c's line formats with outside text in the fields:
 * whatever a field holds (newlines, quotes, invalid UTF-8), an event is exactly one line,
 * a JSON line parses back to the same fields, and a text line cannot be forged into two.
 * Lines are written to a pipe and read back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "switchboard/log.h"
#include "switchboard/utf8.h"

static int pipe_fd[2];

static int setup(void **state)
{
    assert_int_equal(pipe(pipe_fd), 0);
    return 0;
}

static int teardown(void **state)
{
    close(pipe_fd[0]);
    close(pipe_fd[1]);
    sb_log_init(1, 1);
    return 0;
}

/* Everything written so far (one event is far below the pipe's buffer). */
static void read_all(char *buf, size_t cap)
{
    ssize_t n = read(pipe_fd[0], buf, cap - 1);
    assert_true(n > 0);
    buf[n] = '\0';
}

static size_t count_char(const char *s, char c)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        n += *s == c;
    return n;
}

static json_t *hostile_fields(void)
{
    json_t *f = json_object();
    json_object_set_new(f, "detail", sb_json_text("agent said: \"ok\"\nlevel=error fake=1"));
    json_object_set_new(f, "raw", sb_json_text("cut \xC3"));
    json_object_set_new(f, "ws", json_string("w1"));
    json_object_set_new(f, "empty", json_string(""));
    json_object_set_new(f, "n", json_integer(3));
    return f;
}

static void test_text_line_cannot_be_forged(void **state)
{
    char buf[4096];
    sb_log_init(0, pipe_fd[1]);
    sb_log_fields(SB_LOG_INFO, "delivery", hostile_fields());
    read_all(buf, sizeof(buf));
    assert_int_equal(count_char(buf, '\n'), 1);
    assert_non_null(strstr(buf, " detail=\"agent said: \\\"ok\\\"\\nlevel=error fake=1\""));
    assert_non_null(strstr(buf, " raw=\"cut " SB_UTF8_REPLACEMENT "\""));
    assert_non_null(strstr(buf, " ws=w1 "));
    assert_non_null(strstr(buf, " empty=\"\""));
    assert_non_null(strstr(buf, " n=3"));
}

static void test_json_line_round_trips(void **state)
{
    char buf[4096];
    sb_log_init(1, pipe_fd[1]);
    sb_log_fields(SB_LOG_WARN, "delivery", hostile_fields());
    read_all(buf, sizeof(buf));
    assert_int_equal(count_char(buf, '\n'), 1);
    json_error_t je;
    json_t *line = json_loads(buf, 0, &je);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "detail")),
                        "agent said: \"ok\"\nlevel=error fake=1");
    assert_string_equal(json_string_value(json_object_get(line, "level")), "warn");
    json_decref(line);
}

static void test_formatted_message_with_outside_bytes(void **state)
{
    char buf[4096];
    sb_log_init(1, pipe_fd[1]);
    /* Before utf8.c, json_string() refused this and the line lost its message. */
    sb_log(SB_LOG_ERROR, "queue_redis_error", "get ws: %s", "ERR bad \xFF\xFE");
    read_all(buf, sizeof(buf));
    json_error_t je;
    json_t *line = json_loads(buf, 0, &je);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "msg")),
                        "get ws: ERR bad " SB_UTF8_REPLACEMENT SB_UTF8_REPLACEMENT);
    json_decref(line);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_line_cannot_be_forged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_line_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_formatted_message_with_outside_bytes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
