/*
 * circuit.h — per-workspace circuit breaker and in-flight push limit (SPEC §4.2
 * circuit_open and busy).
 *
 * A dead agent must cost callers a fast fallback, not a connect timeout each. Every
 * push outcome is reported here; after SB_CIRCUIT_THRESHOLD consecutive failures the
 * circuit opens for a cool-down (SB_CIRCUIT_COOLDOWN_MS, doubling on each failed probe
 * up to SB_CIRCUIT_COOLDOWN_MAX_MS). When the cool-down has passed the circuit is
 * half-open: exactly one push (the probe) is let through; its success closes the
 * circuit, its failure opens it again. The same table counts pushes in flight per
 * workspace, for the busy decision against the endpoint's max_concurrency.
 *
 * Failures that count: every transport reason (dns_error, connect_refused,
 * connect_timeout, tls_error, upstream_forbidden, response_timeout, connection_reset,
 * invalid_response) and the HTTP reasons http_404, http_405, http_429, http_5xx and
 * http_other (an agent that answers them answers them to every message: a wrong path,
 * a redirect, an overloaded or broken server). 401, 403 and 413 do not open the
 * circuit: they are per-message or configuration answers the agent gives quickly. They
 * prove the agent is reachable but say nothing about its health, so they are neutral:
 * they neither count nor reset the streak (a trickle of oversized messages must not keep
 * a failing agent's circuit closed). A half-open probe that gets one of them ends the
 * probe without a verdict; the next push probes again. Only a delivered answer
 * (SB_REASON_NONE) resets the streak and closes the circuit.
 *
 * Pushes already in flight when the circuit opens still end here. A success from any of
 * them closes the circuit (the agent answered); a failure only adds to the streak. While
 * such pushes and the probe are all in flight, a failure cannot be told apart from the
 * probe's, so the probe's verdict is the last of them to end (at most one response
 * timeout later).
 *
 * State is per instance and shared by its worker threads (one mutex; the table is
 * touched twice per push; nothing blocks or logs under it). Entries are created by
 * sb_circuit_begin only; lookups never create. The table is bounded: once it holds
 * SB_CIRCUIT_TABLE_MAX entries, idle ones (closed, no failures, nothing in flight) are
 * swept; if that is not enough, so is every entry with nothing in flight whose circuit is
 * closed or past its cool-down. Open circuits inside their cool-down and entries with
 * pushes in flight are always kept. A registration that changes the endpoint's URL
 * resets it.
 *
 * Cool-downs are measured on the monotonic clock; times shown to operators (details,
 * describe) are wall-clock ISO-8601.
 */
#ifndef SWITCHBOARD_CIRCUIT_H
#define SWITCHBOARD_CIRCUIT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/reason.h"

#define SB_CIRCUIT_THRESHOLD 5
#define SB_CIRCUIT_COOLDOWN_MS 5000
#define SB_CIRCUIT_COOLDOWN_MAX_MS 60000
/* Table size at which idle entries are swept (see above). */
#define SB_CIRCUIT_TABLE_MAX 100000

/* Creates the table. Idempotent; the other functions also create it on first use, so
 * calling this early only moves the allocation out of the first push. */
void sb_circuit_init(void);
/* Frees the table and every entry (all circuits closed, all in-flight counts zero).
 * Only when no other thread can call into this module; a later call starts afresh. */
void sb_circuit_shutdown(void);

/* Sets the in-flight limit used for endpoints whose registration declares no
 * max_concurrency (--max-inflight-per-endpoint; <= 0: unlimited). Pushes to an agent
 * that never answers otherwise pile up without bound while callers give up and retry;
 * with the limit, once that many pushes wait, further messages fall back busy (queued).
 * Any thread, any time; applies from the next sb_circuit_begin. */
void sb_circuit_set_default_limit(int limit);

/* Decides whether a push to |ws| may start now, and if so counts it in flight.
 * |max_concurrency| 0 means the default limit (sb_circuit_set_default_limit). Returns
 * SB_REASON_NONE (the caller must later call sb_circuit_end exactly once), SB_REASON_CIRCUIT_OPEN
 * or SB_REASON_BUSY (nothing counted, no sb_circuit_end). circuit_open wins over busy. A push
 * admitted while the circuit is half-open is the probe; until it ends every other push gets
 * circuit_open. On a refusal, |detail| (capacity |cap|; may be NULL when |cap| is 0) gets one line
 * for operators, e.g. "circuit open after 5 consecutive failures (last: connect_refused); next
 * probe at 2026-11-24T14:02:07.000Z (cool-down 5 s)" or "4 pushes in flight, max_concurrency 4"; on
 * SB_REASON_NONE it is left untouched. */
sb_reason sb_circuit_begin(const char *ws, int max_concurrency, char *detail, size_t cap);

/* Reports the outcome of a push started with sb_circuit_begin: |reason| SB_REASON_NONE for
 * a delivered answer, else the fallback reason (classified as described above; reasons
 * that are not push outcomes are neutral). A call without a matching begin (or after
 * sb_circuit_shutdown) is ignored when |ws| has no entry. */
void sb_circuit_end(const char *ws, sb_reason reason);

/* Pushes in flight to |ws| from this instance (0 for a workspace never seen). */
int sb_circuit_inflight(const char *ws);

/* Forgets |ws|'s failures (new URL registered): the circuit is closed with no streak
 * and its cool-down back at the base. Pushes still in flight stay counted and must still
 * be ended; their outcomes then count for the new URL's circuit. */
void sb_circuit_reset(const char *ws);

/* {"state":"closed"|"open"|"half_open","consecutive_failures","last_failure_reason",
 *  "opened_at","retry_at","probe_started_at","cooldown_ms","inflight"} for views; never
 * NULL, caller owns the reference. "half_open" means the cool-down has passed (the next
 * push is the probe) or the probe is in flight ("probe_started_at" non-null).
 * "last_failure_reason" is the reason of the streak's last failure, null when the streak
 * is 0. "opened_at" is when this outage opened the circuit (kept across failed probes),
 * "retry_at" when the current cool-down ends/ended; both ISO-8601 wall times, null while
 * closed ("retry_at" also null while the probe is in flight). "cooldown_ms" is null while
 * closed. A workspace never seen describes as closed with zeros and nulls. */
json_t *sb_circuit_describe(const char *ws);

/* Ends |ws|'s cool-down now when its circuit is open: the next push is the half-open
 * probe. For a sign of life that is not a push (the agent's card answered again while
 * switchboard watched it, drain.h); a no-op otherwise. */
void sb_circuit_probe_now(const char *ws);

/* The wall time (epoch ms) |ws|'s cool-down ends while its circuit is open — when the
 * next push becomes the half-open probe — else 0. Switchboard's redelivery schedules its
 * next try no earlier than this, so the probe and the retry are one push (drain.h). */
int64_t sb_circuit_retry_at_ms(const char *ws);

/* Number of circuits currently open or half-open (for metrics). */
int sb_circuit_open_count(void);

/* ---- Test hooks: unit tests only, never called by the server ---- */

/* Replaces the monotonic (microseconds) and wall (epoch milliseconds) clocks this module
 * reads, so tests can step through cool-downs without sleeping. NULL for either restores
 * the real clock (sb_now_mono_us, sb_now_wall_ms). The functions must be thread-safe if
 * other threads use the module meanwhile; they are called with the module's lock held. */
void sb_circuit_test_set_clock(uint64_t (*mono_us)(void), int64_t (*wall_ms)(void));

/* Number of entries in the table (to observe the bound). */
size_t sb_circuit_test_entry_count(void);

#endif
