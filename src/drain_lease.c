/*
 * drain_lease.c — the recovery drain's pure rules about its leases (see drain.h): how
 * many messages it keeps leased ahead of its pushes (sb_drain_read_ahead), how long it
 * leases them for (sb_drain_lease_ms), and whether a buffered message's lease still
 * covers a whole push (sb_drain_lease_fits). Kept apart from drain.c's I/O so the unit
 * tests reach them without Redis or an agent.
 *
 * Why the lease follows the buffer: a buffered message waits for the pushes ahead of
 * it before its own starts. With one lease length for all (push timeout + connect
 * timeout + 5 s), a slow agent (25 s answers against --push-timeout-s 30) made a message
 * wait out most of its lease in the buffer; the lease ended during or before its push,
 * the next queue script's maintenance put it back in ready, and a lease (this drain's
 * or another's) pushed it a second time while the first push was still on its way. So
 * a lease now covers one push bound per round of the window the message may wait for,
 * and a message whose lease is short anyway (the window narrowed after the lease, a
 * slow Redis) is never pushed on it.
 *
 * Never: start a push on a lease that may end before the push's bound, or give back a
 * lease that may have ended already (it may be someone else's by then).
 */
#include "switchboard/drain.h"

#include <stdint.h>

/* Why a measured read-ahead: a lease is two Redis round trips (the script, then the
 * reads), queued behind the acks, the records' notes and the other leases on the
 * worker's one Redis connection. With a fixed window and a half ahead, its round trip
 * (1.3–2.1 ms in bench/run.sh row 5) outlasted the buffer (pushes to nginx answered in
 * ~0.6 ms): 48 slots averaged 21–26 pushes in flight and the drain waited on its leases
 * (42–46 with this read-ahead). */
int sb_drain_read_ahead(int window, uint64_t lease_rtt_us, uint64_t push_us)
{
    if (window <= 1)
        return 0;
    int a = window * 3 / 2, most = window * SB_DRAIN_AHEAD_WINDOWS;
    if (lease_rtt_us > 0 && push_us > 0) {
        double need = 2.0 * window * ((double)lease_rtt_us / (double)push_us);
        if (need > a)
            a = need < most ? (int)need : most;
    }
    return a; /* a window and a half is always below most */
}

int sb_drain_buffer_full(size_t own, size_t all)
{
    return own >= SB_DRAIN_BUFFER_BYTES || all >= SB_DRAIN_PROCESS_BUFFER_BYTES;
}

/* Why rounds of the window: pushes go oldest first, |window| at a time, so the last of
 * |ahead| messages starts after at most ceil(ahead ÷ window) − 1 rounds, each no longer
 * than a push bound (and about the agent's answer time), and needs a whole push bound
 * for itself. Capped, and a fast agent's rounds counted at its pace, since a longer lease
 * only delays the return of messages held by an instance that died mid-drain. */
int64_t sb_drain_lease_ms(int64_t push_bound_ms, int64_t round_ms, int ahead, int window)
{
    const int64_t most = (INT64_MAX - SB_DRAIN_LEASE_MARGIN_MS) / SB_DRAIN_LEASE_ROUNDS_MAX;
    if (push_bound_ms < 0)
        push_bound_ms = 0;
    if (push_bound_ms > most)
        push_bound_ms = most;
    int64_t a = ahead < 1 ? 1 : ahead, w = window < 1 ? 1 : window;
    int64_t rounds = (a + w - 1) / w; /* 64-bit: no overflow for any int inputs */
    if (rounds > SB_DRAIN_LEASE_ROUNDS_MAX)
        rounds = SB_DRAIN_LEASE_ROUNDS_MAX;
    if (round_ms <= 0 || round_ms > push_bound_ms)
        round_ms = push_bound_ms;
    return push_bound_ms + round_ms * (rounds - 1) + SB_DRAIN_LEASE_MARGIN_MS;
}

sb_drain_lease_fit sb_drain_lease_fits(int64_t left_ms, int64_t push_bound_ms)
{
    if (push_bound_ms < 0)
        push_bound_ms = 0;
    /* left − safety ≥ bound, without computing bound + safety (it may overflow) */
    if (left_ms >= SB_DRAIN_PUSH_SAFETY_MS && left_ms - SB_DRAIN_PUSH_SAFETY_MS >= push_bound_ms)
        return SB_DRAIN_LEASE_PUSH;
    return left_ms >= SB_DRAIN_RELEASE_MARGIN_MS ? SB_DRAIN_LEASE_RELEASE : SB_DRAIN_LEASE_DROP;
}
