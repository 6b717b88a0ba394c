/*
 * test_log.c — unit tests for log.c's line formats with outside text in the fields:
 * whatever a field holds (newlines, quotes, invalid UTF-8), an event is exactly one line,
 * a JSON line parses back to the same fields, and a text line cannot be forged into two.
 * Lines are written to a pipe and read back. Also the field-by-field builder and the
 * lines a loop's thread holds until the end of the turn, byte for byte in both forms (the
 * format operators parse must not move when the writers get faster).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <fcntl.h>
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

/* The builder: every kind of field, outside text in a raw (unquoted-when-safe) string,
 * a control character, and reals written as jansson writes them. */
static void test_builder_fields(void **state)
{
    char buf[4096];
    sb_log_init(1, pipe_fd[1]);
    sb_log_line l;
    sb_log_begin(&l, SB_LOG_INFO, "delivery");
    sb_log_str(&l, "detail", "POST http://a/ \xe2\x86\x92 200\t\x01 \"q\" \\ cut \xC3");
    sb_log_str(&l, "reason", NULL);
    sb_log_int(&l, "http_status", 200);
    sb_log_real(&l, "duration_ms", 4.798);
    sb_log_real(&l, "whole", 5.0);
    sb_log_bool(&l, "drained", 1);
    json_t *extra = json_pack("{s:[i,s]}", "list", 1, "x");
    sb_log_json(&l, "list", json_object_get(extra, "list"));
    json_decref(extra);
    sb_log_end(&l);
    read_all(buf, sizeof(buf));
    assert_int_equal(count_char(buf, '\n'), 1);
    assert_non_null(strstr(buf, "\"duration_ms\":4.798,"));
    assert_non_null(strstr(buf, "\"whole\":5.0,"));
    json_error_t je;
    json_t *line = json_loads(buf, 0, &je);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "detail")),
                        "POST http://a/ \xe2\x86\x92 200\t\x01 \"q\" \\ cut " SB_UTF8_REPLACEMENT);
    assert_true(json_is_null(json_object_get(line, "reason")));
    assert_int_equal(json_integer_value(json_object_get(line, "http_status")), 200);
    assert_true(json_is_true(json_object_get(line, "drained")));
    assert_int_equal(json_array_size(json_object_get(line, "list")), 2);
    assert_string_equal(json_string_value(json_object_get(line, "event")), "delivery");
    json_decref(line);

    /* A line longer than the builder's inline buffer. */
    char big[3000];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    sb_log_begin(&l, SB_LOG_INFO, "big");
    sb_log_str(&l, "v", big);
    sb_log_end(&l);
    char buf2[8192];
    read_all(buf2, sizeof(buf2));
    line = json_loads(buf2, 0, &je);
    assert_non_null(line);
    assert_int_equal(strlen(json_string_value(json_object_get(line, "v"))), sizeof(big) - 1);
    json_decref(line);
}

/* A delivery-like line in both forms, every byte after the time compared. */
static void builder_line(void)
{
    sb_log_line l;
    sb_log_begin(&l, SB_LOG_WARN, "delivery");
    sb_log_str(&l, "message_id", "m-1.a_b");
    sb_log_str(&l, "workspace", "");
    sb_log_str(&l, "reason", NULL);
    sb_log_str(&l, "detail", "POST http://a/ \xe2\x86\x92 503 \"q\"\n");
    sb_log_strn(&l, "cut", 3, "abcdef", 4);
    sb_log_str(&l, "bad", "x\xC3");
    sb_log_int(&l, "http_status", -42);
    sb_log_real(&l, "duration_ms", 12.5);
    sb_log_bool(&l, "drained", 0);
    json_t *extra = json_pack("{s:s,s:[i,n]}", "attempt", "a b", "list", 1);
    sb_log_members(&l, extra);
    json_decref(extra);
    sb_log_end(&l);
}

static void test_builder_exact_bytes(void **state)
{
    char buf[4096];
    sb_log_init(1, pipe_fd[1]);
    builder_line();
    read_all(buf, sizeof(buf));
    const char *rest = strstr(buf, "\",\"level\"");
    assert_non_null(rest);
    assert_int_equal(strncmp(buf, "{\"time\":\"", 9), 0);
    assert_string_equal(
        rest, "\",\"level\":\"warn\",\"event\":\"delivery\",\"message_id\":\"m-1.a_b\","
              "\"workspace\":\"\",\"reason\":null,\"detail\":\"POST http://a/ \xe2\x86\x92 503 "
              "\\\"q\\\"\\n\",\"cut\":\"abcd\",\"bad\":\"x" SB_UTF8_REPLACEMENT "\","
              "\"http_status\":-42,\"duration_ms\":12.5,\"drained\":false,\"attempt\":\"a b\","
              "\"list\":[1,null]}\n");
    sb_log_init(0, pipe_fd[1]);
    builder_line();
    read_all(buf, sizeof(buf));
    rest = strchr(buf, ' ');
    assert_non_null(rest);
    assert_string_equal(rest, " warn delivery message_id=m-1.a_b workspace=\"\" reason=null "
                              "detail=\"POST http://a/ \xe2\x86\x92 503 \\\"q\\\"\\n\" cut=abcd "
                              "bad=\"x" SB_UTF8_REPLACEMENT "\" http_status=-42 duration_ms=12.5 "
                              "drained=false attempt=\"a b\" list=[1,null]\n");
}

/* With a loop attached, lines wait for the end of the loop turn, then go out together. */
static void test_lines_held_until_end_of_turn(void **state)
{
    char buf[4096];
    sb_log_init(1, pipe_fd[1]);
    fcntl(pipe_fd[0], F_SETFL, O_NONBLOCK);
    struct event_base *base = event_base_new();
    sb_log_attach_loop(base);
    sb_log(SB_LOG_INFO, "one", "first");
    sb_log(SB_LOG_INFO, "two", "second");
    assert_int_equal(read(pipe_fd[0], buf, sizeof(buf)), -1); /* nothing yet */
    event_base_loop(base, EVLOOP_NONBLOCK);
    read_all(buf, sizeof(buf));
    assert_int_equal(count_char(buf, '\n'), 2);
    assert_non_null(strstr(buf, "\"first\""));
    assert_true(strstr(buf, "\"first\"") < strstr(buf, "\"second\""));
    sb_log(SB_LOG_INFO, "three", "third"); /* detach writes what is left */
    sb_log_detach_loop();
    read_all(buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"third\""));
    sb_log(SB_LOG_INFO, "four", "fourth"); /* and then each line at once */
    read_all(buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"fourth\""));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_line_cannot_be_forged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_line_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_formatted_message_with_outside_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builder_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builder_exact_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lines_held_until_end_of_turn, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
