/*
 * What the oneDNN micro-benchmarks share (dwfuse-bench.c, mmconv-bench.c, test-nn-wino.c
 * --bench): exit on a failed oneDNN call, a millisecond clock, a reproducible uniform draw in
 * [-0.5, 0.5), a memory filled with such draws.
 */
#pragma once

#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(call)                                                                            \
    do {                                                                                       \
        dnnl_status_t s_ = (call);                                                             \
        if (s_ != dnnl_success) {                                                              \
            fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #call, (int)s_);     \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static inline double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static inline float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

/* A memory of layout md holding scale * uniform draws from seed, written in the plain layout
 * plain (same dims) and reordered into md when md differs. */
static inline dnnl_memory_t bench_filled(dnnl_engine_t eng, dnnl_stream_t strm,
                                         const dnnl_memory_desc_t *md,
                                         const dnnl_memory_desc_t *plain, unsigned seed,
                                         float scale)
{
    dnnl_memory_t pm, m;
    float *p;
    CHECK(dnnl_memory_create(&pm, plain, eng, DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_get_data_handle(pm, (void **)&p));
    size_t n = dnnl_memory_desc_get_size(plain) / sizeof(float);
    for (size_t i = 0; i < n; i++)
        p[i] = frand(&seed) * scale;
    if (dnnl_memory_desc_equal(md, plain))
        return pm;
    CHECK(dnnl_memory_create(&m, md, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t r;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, plain, eng, md, eng, NULL));
    CHECK(dnnl_primitive_create(&r, rpd));
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, pm}, {DNNL_ARG_TO, m}};
    CHECK(dnnl_primitive_execute(r, strm, 2, a));
    CHECK(dnnl_stream_wait(strm));
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(pm);
    return m;
}
