/*
 * test_wake.c — unit tests for wake.c, the doorbell other threads ring to reach a loop
 * that runs without libevent's locks: rings from another thread reach the callback on
 * the loop's thread, rings before the callback runs coalesce (never lost, never more
 * calls than rings), a ring during the callback brings another call, and a wake freed
 * with a ring pending never calls back. Every wait has a deadline.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>

#include "switchboard/util.h"
#include "switchboard/wake.h"

#define RINGS 2000

typedef struct {
    sb_wake *w;
    int calls;
    pthread_t loop_thread;
    int wrong_thread;
    int ring_again; /* rings once more from inside the callback, then clears */
} fx;

static void on_rung(void *arg)
{
    fx *f = arg;
    f->calls++;
    if (!pthread_equal(pthread_self(), f->loop_thread))
        f->wrong_thread = 1;
    if (f->ring_again) {
        f->ring_again = 0;
        sb_wake_ring(f->w);
    }
}

static struct event_base *nolock_base(void)
{
    struct event_config *ec = event_config_new();
    assert_non_null(ec);
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    assert_non_null(base);
    return base;
}

/* Runs |base| until f->calls reaches |want| or |ms| pass; then a little longer, so that
 * any call too many would show. */
static void run_for(struct event_base *base, fx *f, int want, int ms)
{
    uint64_t end = sb_now_mono_us() + (uint64_t)ms * 1000u;
    while (f->calls < want && sb_now_mono_us() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    uint64_t settle = sb_now_mono_us() + 50000u;
    while (sb_now_mono_us() < settle)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static void *ringer(void *arg)
{
    fx *f = arg;
    for (int i = 0; i < RINGS; i++)
        sb_wake_ring(f->w);
    return NULL;
}

static void test_rings_from_another_thread(void **state)
{
    struct event_base *base = nolock_base();
    fx f = {.loop_thread = pthread_self()};
    f.w = sb_wake_new(base, on_rung, &f);
    assert_non_null(f.w);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, ringer, &f), 0);
    pthread_join(t, NULL);
    run_for(base, &f, 1, 2000);
    /* Every ring was made before the loop looked: they coalesce into one call. */
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.wrong_thread, 0);
    sb_wake_ring(f.w); /* a later ring is a later call */
    run_for(base, &f, 2, 2000);
    assert_int_equal(f.calls, 2);
    sb_wake_free(f.w);
    event_base_free(base);
}

static void test_ring_during_callback_calls_again(void **state)
{
    struct event_base *base = nolock_base();
    fx f = {.loop_thread = pthread_self(), .ring_again = 1};
    f.w = sb_wake_new(base, on_rung, &f);
    assert_non_null(f.w);
    sb_wake_ring(f.w);
    run_for(base, &f, 2, 2000);
    assert_int_equal(f.calls, 2);
    sb_wake_free(f.w);
    event_base_free(base);
}

static void test_free_drops_a_pending_ring(void **state)
{
    struct event_base *base = nolock_base();
    fx f = {.loop_thread = pthread_self()};
    f.w = sb_wake_new(base, on_rung, &f);
    assert_non_null(f.w);
    sb_wake_ring(f.w);
    sb_wake_free(f.w);
    sb_wake_ring(NULL); /* a no-op */
    run_for(base, &f, 1, 100);
    assert_int_equal(f.calls, 0);
    /* The wake's event is gone: nothing is left for the loop. */
    assert_int_equal(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 0);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rings_from_another_thread),
        cmocka_unit_test(test_ring_during_callback_calls_again),
        cmocka_unit_test(test_free_drops_a_pending_ring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
