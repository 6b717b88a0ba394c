/*
 * record.h — delivery records and per-workspace delivery counters in Redis (SPEC §5.2,
 * §5.3), and the shared queue gauges (§5.1).
 *
 * Every delivery decision is noted once, after its caller was answered (sb_record_note):
 * delivered pushes gathered over 2 ms, anything else at once, go out as one
 * fire-and-forget script call per workspace on the worker's connection, which updates the
 * workspace's counters hash (pushes, fallbacks by reason, the current run of fallbacks and
 * of failed pushes with their start, the last push's outcome and status), adds the
 * workspace to the global set of recent fallbacks (a command on the {sb} slot, at most
 * once a second per workspace per thread), and for a pushed message stores its
 * delivery record for --pushed-record-ttl-s (0: none; counters and logs still tell) in
 * the bucket of its 10 seconds and its sender (SB_RECORD_BUCKET_KEY_FMT below): a plain
 * HSET per bucket right after the script, which creates the bucket with its expiry.
 * A queued fallback's note runs inside its queue append instead (sb_record_note_inline,
 * sb_record_note_after_lua): one script per batch of fallbacks (queue.h). Scripts go by SHA
 * (sync.h). A queued message's record lives in its queue hash (queue.h): the append script links it
 * from the same record key. So a push never waits for Redis, and every instance reads the same
 * counters. Errors are logged, never answered.
 *
 * Reads (sb_record_stats_one, sb_record_stats_many) gather the queue facts and counters
 * of one or many workspaces (one script per workspace: each lives on its own hash slot), for GET
 * /workspaces/{ws}/delivery and GET /delivery. sb_record_refresh_gauges feeds
 * switchboard_queue_depth and switchboard_queue_oldest_age_seconds (and
 * switchboard_stalled_workspaces) from the queue index sb:{sb}:queues (at most SB_RECORD_GAUGE_MAX
 * workspaces, one small script each).
 *
 * Keys (proto/redis-schema.md): sb:{ws}:dstats (HASH, counters), sb:{ws}:dr:<messageId>
 * (HASH sender → record JSON or queue entry id, SB_RECORD_KEY_FMT in queue.h; a queued
 * message's link is mostly in the queue's hourly bucket, SB_QUEUE_LINK_BUCKET_MS),
 * sb:{sb}:fallbacks (ZSET ws → last fallback ms, trimmed to the last hour and 10000 members).
 *
 * Threads: every function runs on the loop thread of the sb_redis it is given.
 * Never: put a token, the inbound secret or a request body in a record or counter.
 */
#ifndef SWITCHBOARD_RECORD_H
#define SWITCHBOARD_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "switchboard/common.h"
#include "switchboard/reason.h"
#include "switchboard/sync.h"

struct sb_redis;

#define SB_RECORD_FALLBACKS_KEY SB_SYNC_FALLBACKS_KEY
#define SB_RECORD_RECENT_MS (3600 * 1000) /* "recent" fallbacks for GET /delivery */
#define SB_RECORD_FALLBACKS_MAX 10000     /* members kept in sb:{sb}:fallbacks */
#define SB_RECORD_OVERVIEW_MAX 1000       /* workspaces one GET /delivery looks at */
#define SB_RECORD_STALLED_AFTER_MS 300000 /* switchboard_stalled_workspaces: oldest > 5 min */
#define SB_RECORD_GAUGE_MAX 5000          /* workspaces one gauge refresh looks at */

/* How a decision ended, for the counters. */
typedef enum {
    SB_NOTE_DELIVERED = 0, /* a push (or drained push) the agent took */
    SB_NOTE_FALLBACK,      /* a message that was not pushed (queued or refused) */
    SB_NOTE_FAILED,        /* a drained push that failed (the message stays queued) */
    SB_NOTE_REGISTERED     /* a new registration: the runs of failures start afresh */
} sb_note_kind;

/* One decision. Strings are borrowed for the call; NULL means none. */
typedef struct sb_record_note {
    const char *ws;
    sb_note_kind kind;
    sb_reason reason; /* fallback or failure reason, NONE when delivered */
    const char *detail;
    int http_status; /* 0: none */
    int pushed;      /* 1 when a push was attempted (its outcome updates last_push) */
    double duration_ms;
    int64_t at_ms;            /* when the decision (or push) began, wall clock */
    const char *message_id;   /* with record_json */
    const char *source;       /* with record_json */
    const char *record_json;  /* a pushed message's record (SPEC §5.2), or NULL */
    size_t record_len;        /* its length when known (0: measured here) */
    int64_t retain_ms;        /* the counters live this long (--queue-ttl-s) */
    int64_t record_retain_ms; /* record_json lives this long (--pushed-record-ttl-s);
                                 0: as long as the counters */
} sb_record_note;

/* Pushed messages' records: HASH buckets of SB_RECORD_BUCKET_MS of a workspace and a
 * sender, messageId → record JSON (its "source" member names the sender), keyed by the
 * member "<bucket number>:<sender>" of the ZSET of the live ones (member → its expiry ms;
 * a bare bucket number names a bucket of every sender, as earlier builds wrote it, read the
 * same way).
 * queue.c's lookup reads them. */
#define SB_RECORD_BUCKET_MS 10000
#define SB_RECORD_BUCKET_KEY_FMT "sb:{%s}:pb:%s" /* workspace, pbx member */
#define SB_RECORD_BUCKETS_KEY_FMT "sb:{%s}:pbx"

/* Notes held per worker thread while its Redis connection is down (see below). */
#define SB_RECORD_BACKLOG_MAX 10000

/* Copies the note and returns at once; it is sent within 2 ms (a delivered push) or at
 * once (any other note), in one script call with the other waiting notes of the same
 * workspace. While |r| is down the
 * note waits in this thread's backlog (at most SB_RECORD_BACKLOG_MAX notes, about 1 KiB
 * each; past that it is dropped, counted in switchboard_record_notes_dropped_total and
 * logged once per outage) and sent, oldest first, when |r| is back. A lost connection
 * or an error reply after sending is logged as "record_note_failed" and not retried.
 * Never affects the caller's answer. Call on |r|'s loop thread. */
void sb_record_note_send(struct sb_redis *r, const sb_record_note *n);

/* ---- a fallback's note inside its queue append ----
 *
 * A queued fallback's note runs in the append's own script (queue.h sb_queue_msg.after_lua)
 * instead of a call of its own: the same note script text, as a function, behind a fold
 * that makes one event of each run of same-reason fallbacks in the append's batch. */

/* The note script as sb_queue_msg.after_lua (built once; static for the process). */
const char *sb_record_note_after_lua(void);

/* A note's keys and arguments for that hook (|argv| points into the struct): |n| must carry
 * no record (record_json NULL). Pair with sb_queue_msg.before_send =
 * sb_record_notes_send_now, so the thread's waiting notes go before the append's batch. */
typedef struct sb_record_note_args {
    char skey[SB_WS_ID_MAX + 32], retain[24], status[24], dur[40], at[24];
    const char *argv[10];
    int nkeys, nargs; /* argv holds nkeys keys, then nargs arguments */
} sb_record_note_args;
void sb_record_note_inline(const sb_record_note *n, sb_record_note_args *out);

/* Sends this thread's waiting notes on |r| now (nothing when they wait for another
 * connection). As the append's before_send, the workspace's counters change in decision
 * order, but for the notes decided in the batch's own loop turn: those go first. Call on
 * |r|'s loop thread. */
void sb_record_notes_send_now(struct sb_redis *r);

/* The global half of a fallback's note: the workspace into sb:{sb}:fallbacks (the recent
 * fallbacks of GET /delivery), a separate command on the {sb} slot, skipped when this
 * thread sent one for the workspace less than a second before (the list's window is an
 * hour). Fire-and-forget; nothing while |r| is down (the list is a view, not a record). */
void sb_record_note_fallback_index(struct sb_redis *r, const char *ws, int64_t at_ms);

/* An sb_redis_state_fn for the worker connection that carries the notes: when it comes
 * up, the thread's backlog is sent. |arg| is unused. */
void sb_record_redis_state(struct sb_redis *r, int up, void *arg);

/* Notes held in this thread's backlog now. */
size_t sb_record_backlog_len(void);

/* Note calls this thread sent whose reply has not come back yet (a stopping worker waits
 * for them: a note sent but never written to the socket would be lost at exit). */
size_t sb_record_notes_unanswered(void);

/* Frees this thread's backlog (logging how many notes are lost) and its flush event;
 * call on each worker
 * thread as it exits. */
void sb_record_backlog_clear(void);

/* What Redis knows about one workspace's delivery. Strings are owned (sb_record_stats_clear). */
typedef struct sb_record_stats {
    char *ws;
    long long depth, leased, dead_letters;
    int64_t oldest_enqueued_ms; /* 0: empty */
    int64_t pushes, fallbacks;
    int64_t by_reason[SB_REASON__COUNT];
    int64_t first_fallback_ms, last_fallback_ms;
    sb_reason last_reason;
    char *last_detail;
    sb_reason streak_reason;
    int64_t streak_count;
    int64_t streak_since_ms;
    sb_reason fail_reason;
    int64_t fail_count;
    int64_t fail_since_ms;
    int fail_status;
    int64_t last_push_ms;
    char *last_push_outcome; /* "delivered" or a reason name */
    int last_push_status;
    char *last_push_detail;
    double last_push_duration_ms;
    int64_t last_delivered_ms;
    int64_t last_lease_ms;
    /* switchboard's own redelivery (retry.h's sb:{ws}:rd) */
    int64_t redeliver_next_ms;    /* the next scheduled try, 0: none (the last emptied it) */
    int64_t redeliver_last_ms;    /* the last run that pushed or failed, 0: none */
    char *redeliver_last_outcome; /* "delivered", a reason, or "refused: <reason>" */
} sb_record_stats;

void sb_record_stats_clear(sb_record_stats *st);

/* |st| (|n| of them, borrowed for the call) or an error: SB_ERR_UNAVAILABLE, SB_ERR. */
typedef void (*sb_record_stats_fn)(int err, const sb_record_stats *st, size_t n, void *arg);

/* The facts of |ws|. Returns SB_OK (|cb| runs once, later) or SB_ERR_UNAVAILABLE (never). */
int sb_record_stats_one(struct sb_redis *r, const char *ws, sb_record_stats_fn cb, void *arg);

/* The facts of every workspace with queued messages or a fallback in the last
 * SB_RECORD_RECENT_MS, plus |extra| (|nextra| ids, e.g. open circuits), at most
 * SB_RECORD_OVERVIEW_MAX in all. |now_ms| is the wall clock. Returns as above. */
int sb_record_stats_many(struct sb_redis *r, int64_t now_ms, const char *const *extra,
                         size_t nextra, sb_record_stats_fn cb, void *arg);

/* Reads the queue totals over sb:{sb}:queues (SB_RECORD_GAUGE_MAX workspaces) and sets them
 * with sb_metrics_set_queue, and the push-mode workspaces (per the registry replica) whose
 * oldest queued message is older than SB_RECORD_STALLED_AFTER_MS with
 * sb_metrics_set_stalled. Fire-and-forget; meant for a periodic timer (sync.h). */
void sb_record_refresh_gauges(struct sb_redis *r);

#endif
