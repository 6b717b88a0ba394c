/*
 * notify.h — A2A push notifications for switchboard's own tasks (SPEC §4.3).
 *
 * A send that falls back to the poll queue becomes a task switchboard issued
 * ("sbtask_..."). When the send carried a push-notification config (v0.3
 * params.configuration.pushNotificationConfig, v1.0 params.configuration.
 * taskPushNotificationConfig), switchboard itself POSTs to that URL each time the task
 * reaches a new state — working (leased by a consumer, or pushed by switchboard's own
 * redelivery), completed (acked; with the ack's result or the agent's answer), failed
 * (dead-lettered, or the agent answered a JSON-RPC error), canceled — in the request's
 * A2A version's shape: v0.3 the Task object (Content-Type application/json), v1.0 a
 * StreamResponse {"task": Task} (application/a2a+json). Every notification carries the
 * config's token as X-A2A-Notification-Token and, when the config names them, its
 * credentials as "Authorization: <scheme> <credentials>". The URL goes through the
 * worker's upstream pool, so the same address policy as for agents applies
 * (--allow-upstream). A failed notification is retried with back-off (1 s doubling to
 * 5 min, SB_NOTIFY_MAX_FAILS tries per state); every attempt is added to the message's
 * delivery record (outcome "notified" or "notification_failed") and counted in
 * switchboard_notifications_total{outcome}.
 *
 * How state changes are seen: not by hooks alone — a change may happen on another
 * instance, or inside a queue script (dead letters). Each task with a config sits in a
 * per-workspace due set; worker 0 of every instance claims due tasks once a second
 * (claiming is one script, so one instance handles a task at a time), reads the task's
 * record, and notifies when its state differs from the last one notified. Unchanged
 * tasks are looked at again after 1 s doubling to 30 s. sb_notify_task_state makes a
 * task due at once, so changes made here are notified within a round trip.
 *
 * Keys (proto/redis-schema.md), all of one workspace under {ws} but the global index:
 *   sb:{ws}:pn:<entry id>  HASH  "v" version ("0.3"|"1.0"), "c:<config id>" config JSON,
 *                                "last" last state notified, "fails", "hint"
 *   sb:{ws}:pndue          ZSET  entry id -> when to look next (ms)
 *   sb:{sb}:pnws                ZSET  workspace -> last registration (ms); the sweep's index,
 *                                written by single-key commands only
 *
 * Threads: every function runs on the loop of the worker it is given.
 */
#ifndef SWITCHBOARD_NOTIFY_H
#define SWITCHBOARD_NOTIFY_H

#include <jansson.h>
#include <stdint.h>

#include "switchboard/a2a.h"
#include "switchboard/request.h"

struct sb_worker;

#define SB_NOTIFY_MAX_FAILS 8     /* tries per state before giving up on it */
#define SB_NOTIFY_TIMEOUT_MS 5000 /* bound on one notification's round trip */

/* The push-notification config a send carries, normalized to {"id","url","token"?,
 * "scheme"?,"credentials"?} (a new object; id defaults to |task_id|), or NULL when it
 * carries none or one without a string "url". Accepts the v0.3 shape
 * (pushNotificationConfig, authentication.schemes[0]) and the v1.0 one
 * (taskPushNotificationConfig, authentication.scheme) under params.configuration. */
json_t *sb_notify_config_of(const json_t *request, const char *task_id);

/* A queued send's task |task_id| (of workspace |ws|) gets |config| (normalized, borrowed)
 * for version |v|: stored for |retain_ms|, and the task is watched from now on.
 * Fire-and-forget (a Redis failure is logged: the task then has no notifications). */
void sb_notify_register(struct sb_worker *w, const char *ws, const char *task_id, sb_a2a_version v,
                        const json_t *config, int64_t retain_ms);

/* Asks whether |ws| has any watched task (a task with a push-notification config that
 * has not ended): |cb|(1 some, 0 none, |arg|), -1 on a Redis error or a lost connection.
 * One ZCARD; the redelivery asks once per lease and skips sb_notify_task_state for a
 * workspace without any. Returns SB_OK, or SB_ERR_UNAVAILABLE (|cb| never runs). */
int sb_notify_watching(struct sb_worker *w, const char *ws, void (*cb)(int watched, void *arg),
                       void *arg);

/* Something changed task |task_id| of |ws| on this instance (lease, ack, cancel,
 * redelivery): look at it now and notify its new state. |hint| may be NULL, or "working"
 * when switchboard itself is pushing the still-queued message to the agent (the
 * redelivery scheduler calls this right before its push; the ack after a successful
 * push is then seen as completed). A task without a config costs one Redis command.
 * Never fails visibly; safe to call for any task id (others are ignored). */
void sb_notify_task_state(struct sb_worker *w, const char *ws, const char *task_id,
                          const char *hint);

/* Starts the once-a-second sweep on |w|'s loop (call for worker 0 only, before its loop
 * runs) / stops it (on that loop, before the loop's Redis and upstream pool are freed:
 * from then on no notification starts). */
void sb_notify_start(struct sb_worker *w);
void sb_notify_stop(void);

/* 1 when |method| is one of the push-notification config methods: v0.3
 * tasks/pushNotificationConfig/{set,get,list,delete}, v1.0 {Create,Get,Delete}
 * TaskPushNotificationConfig and ListTaskPushNotificationConfigs. */
int sb_notify_is_config_method(const char *method);

/* The task id a config method names (params.taskId, else params.id), borrowed from
 * |call|'s request, or NULL. */
const char *sb_notify_config_task(const sb_a2a_call *call);

/* Answers a config method on switchboard task |call|'s task (of workspace |ws|): set
 * stores (and watches the task), get/list answer the stored configs (credentials never
 * shown), delete removes one. The admin and the task's sender may call them; anyone
 * else gets "task not found" (-32001). Takes over |call| (left zeroed). */
void sb_notify_answer(sb_request *req, const char *ws, sb_a2a_call *call);

#endif
