/*
 * drain_int.h — what drain.c and drain_watch.c share (private to the drain module).
 */
#ifndef SWITCHBOARD_DRAIN_INT_H
#define SWITCHBOARD_DRAIN_INT_H

#include <stdint.h>

struct sb_worker;

/* Watches the agent of |ws| on worker |w| (call on its loop) until |until_ms| (wall
 * clock): its card is fetched every 2 s, and the first answer ends the circuit's
 * cool-down and kicks a drain. A watch of |ws| already there only gets the new end.
 * |now|: fetch once at once too. No more than 1024 watches per worker thread (a
 * further one is not made). */
void sb_drain_watch(struct sb_worker *w, const char *ws, int64_t until_ms, int now);

#endif
