/*
 * procstat.h — the standard Prometheus process_* series (SPEC §5.1), read from the
 * kernel at scrape time: CPU seconds, resident and virtual memory, open and maximum
 * file descriptors, start time. Linux only (/proc); where a value cannot be read its
 * series is left out rather than reported as 0.
 */
#ifndef SWITCHBOARD_PROCSTAT_H
#define SWITCHBOARD_PROCSTAT_H

struct evbuffer;

/* Appends process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds and
 * process_start_time_seconds (each with HELP and TYPE) to |out| in text format 0.0.4.
 * Any thread; reads /proc/self and /proc/stat, never fails (a series it cannot read is
 * omitted). */
void sb_procstat_render(struct evbuffer *out);

#endif
