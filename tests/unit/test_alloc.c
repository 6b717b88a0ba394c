/*
 * test_alloc.c — unit tests for alloc.c's sb_calloc: blocks up to 1 KB come from malloc
 * and a memset (glibc's calloc skips its per-thread cache), larger ones from calloc;
 * either way every byte is zero, also when the block reuses memory that was just
 * written and freed (the case calloc's fresh pages never show).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "switchboard/alloc.h"

static void test_calloc_zeroes_reused_blocks(void **state)
{
    static const size_t sizes[] = {1, 8, 48, 448, 1000, 1008, 1023, 1024, 1025, 1584, 5000};
    static const size_t counts[] = {1, 2, 3, 7};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
            size_t n = sizes[i] * counts[k];
            for (int round = 0; round < 3; round++) { /* dirty, free, take again */
                unsigned char *p = sb_calloc(counts[k], sizes[i]);
                for (size_t b = 0; b < n; b++)
                    if (p[b] != 0)
                        fail_msg("%zu x %zu: byte %zu is %u", counts[k], sizes[i], b, p[b]);
                memset(p, 0xA5, n);
                sb_free(p);
            }
        }
    }
    /* Zero sizes still give a block that can be freed. */
    void *z = sb_calloc(0, 16);
    assert_non_null(z);
    sb_free(z);
    z = sb_calloc(16, 0);
    assert_non_null(z);
    sb_free(z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calloc_zeroes_reused_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
