/*
 * wake.c — a loop's cross-thread doorbell: an eventfd read by a persistent event on the
 * owning loop (see wake.h).
 *
 * The eventfd is the only shared state: write(2) from the ringing thread, read(2) on the
 * owner's loop, both atomic in the kernel, so the loop itself needs no lock. The read
 * resets the counter before the callback runs, so a ring that lands during the callback
 * brings another call and none is lost.
 *
 * Never: touch the event from a ringing thread.
 */
#include "switchboard/wake.h"
#include "switchboard/alloc.h"

#include <errno.h>
#include <event2/event.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct sb_wake {
    int fd;
    struct event *ev;
    void (*fn)(void *arg);
    void *arg;
};

static void on_rung(evutil_socket_t fd, short what, void *arg)
{
    sb_wake *w = arg;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) == -1)
        return; /* EAGAIN: a spurious wake-up, nothing was rung */
    w->fn(w->arg);
}

sb_wake *sb_wake_new(struct event_base *base, void (*fn)(void *arg), void *arg)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd == -1)
        return NULL;
    sb_wake *w = sb_calloc(1, sizeof(*w));
    w->fd = fd;
    w->fn = fn;
    w->arg = arg;
    w->ev = sb_event_new(base, fd, EV_READ | EV_PERSIST, on_rung, w);
    event_add(w->ev, NULL);
    return w;
}

void sb_wake_ring(sb_wake *w)
{
    if (w == NULL)
        return;
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(w->fd, &one, sizeof(one));
    while (n == -1 && errno == EINTR);
}

void sb_wake_free(sb_wake *w)
{
    if (w == NULL)
        return;
    event_free(w->ev);
    close(w->fd);
    sb_free(w);
}
