/*
 * redeliver.h — the redelivery scheduler (SPEC §4.4): one instance at a time scans the
 * due-time index (retry.h) and starts a drain (drain.h) for every workspace whose next
 * retry has come.
 *
 * Every instance runs the scheduler on worker 0's loop. Each second it tries to take or
 * renew the scheduler lease (a member of the index itself, held for 3 s); the holder
 * scans the index every SB_REDELIVER_TICK_MS for workspaces due now (at most
 * SB_RETRY_SCAN_MAX per scan), pushes each one's due time SB_REDELIVER_RUN_MS ahead (so
 * a run that dies with its instance is tried again) and starts its drain; the drain
 * writes the real next time when it ends. A workspace that is no longer push mode (or
 * whose lease lapsed) leaves the index: its register or heartbeat starts the next drain.
 * When the holder dies its lease expires and another instance takes over within about
 * 3 s. A workspace with nothing queued is not in the index and costs nothing; the
 * scheduler's own cost is constant: about one lease call a second per instance and, on
 * the holder, two scans a second.
 *
 * Also registers the drain as retry.h's kick, for the after-push check.
 */
#ifndef SWITCHBOARD_REDELIVER_H
#define SWITCHBOARD_REDELIVER_H

struct sb_worker;

#define SB_REDELIVER_TICK_MS 500
#define SB_REDELIVER_LEADER_TTL_MS 3000
#define SB_REDELIVER_RUN_MS 30000

/* Starts the scheduler on |w|'s loop (worker 0; call before its thread runs, after
 * sb_sync_start). Once per process. */
void sb_redeliver_start(struct sb_worker *w);

/* Frees the scheduler's timer (after the loop stopped). Safe when not started. */
void sb_redeliver_stop(void);

/* 1 while this instance holds the scheduler lease (as last renewed). Any thread. */
int sb_redeliver_is_leader(void);

#endif
