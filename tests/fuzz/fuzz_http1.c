/*
 * fuzz_http1.c — the HTTP/1.1 server codec (http1.c), bytes in as a client sends them.
 *
 * Input: the bytes of one client connection (pipelined requests, chunked bodies,
 * Expect: 100-continue, garbage, or the h2c preface followed by HTTP/2 frames, which the
 * codec hands over to http2.c). See codec_harness.h for how a connection is run and
 * answered. Corpus: tests/corpus/http1/ (requests captured from the integration suite
 * plus hand-made framing cases).
 */
#include "codec_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    harness_run(data, size, sb_http1_conn_new, 1);
    return 0;
}
