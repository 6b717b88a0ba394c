/*
 * probe.h — the registration probe (SPEC §4.1): does the registered agent serve the
 * agent card, and does the card advertise the URL that was registered?
 *
 * A port or path mismatch between the registered URL and the one the agent's card
 * advertises is the classic cause of messages silently falling back to poll, so every
 * push-mode register fetches <origin>/.well-known/agent-card.json and reports
 *   {"reachable", "status", "card_url", "matches", "advertised_urls", "warning",
 *    "probed_at", "card"?}
 * where "matches" is true when any advertised interface URL (v0.3 "url" and
 * "additionalInterfaces", v1.0 "supportedInterfaces") equals the registered URL, false
 * when none does, and null when there is no readable card. "warning" is one sentence
 * for the operator, or null. "card" is the fetched card itself (at most
 * SB_PROBE_CARD_MAX bytes), which the card route serves when the agent registered
 * without one; "advertised_urls" lists each URL once. The probe warns; it never refuses
 * a registration.
 *
 * The fetch goes through the worker's upstream pool (so the address policy applies) with
 * a short response deadline, and never carries the inbound secret.
 */
#ifndef SWITCHBOARD_PROBE_H
#define SWITCHBOARD_PROBE_H

#include <jansson.h>

#include "switchboard/netaddr.h"
#include "switchboard/registry.h"

struct sb_upstream_pool;

#define SB_PROBE_TIMEOUT_MS 3000
#define SB_PROBE_CARD_MAX (64 * 1024)

/* Called once with the result object (ownership passes to the callee). */
typedef void (*sb_probe_fn)(json_t *result, void *arg);

/* Fetches the agent card of |url|'s origin, speaking the registered |protocol| (an
 * h2c-only agent answers nothing else), and compares it with |url_str| (the URL as
 * registered). |cb| runs later, from the loop, exactly once. */
void sb_probe_agent_card(struct sb_upstream_pool *pool, const sb_url *url, const char *url_str,
                         sb_upstream_proto protocol, sb_probe_fn cb, void *arg);

/* The URLs a card advertises (v0.3 url + additionalInterfaces[].url, v1.0
 * supportedInterfaces[].url), each once in first-seen order, as a new JSON array of
 * strings. Never NULL. */
json_t *sb_probe_card_urls(const json_t *card);

/* Compares |card| with the registered |url_str| and sets "matches" (true, false, or null
 * when it advertises no URL), "advertised_urls" and "warning" (a sentence naming the
 * card by |where|, e.g. "at http://h/.well-known/agent-card.json" or "given at
 * registration"; null when it matches) in |r|. Used for the probed card and the card of
 * the register body alike. */
void sb_probe_judge_card(json_t *r, const json_t *card, const char *url_str, const char *where);

/* 1 when |a| and |b| name the same endpoint: scheme, host (case-insensitive), port and
 * path (a trailing "/" ignored) equal. 0 otherwise, or when either does not parse. */
int sb_probe_same_url(const char *a, const char *b);

#endif
