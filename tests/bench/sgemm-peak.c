/* The machine's fp32 matrix-multiply peak as oneDNN sees it: dnnl_sgemm on a large square
 * product, the yardstick of bench-nn.py. Threads come from OMP_NUM_THREADS (oneDNN on OpenMP).
 *
 *   sgemm-peak [N [REPS]]    default N=2048, REPS=7; prints n=, median_ms=, gflops=, best_gflops=
 */
#include <dnnl.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 2048;
    long reps = argc > 2 ? strtol(argv[2], NULL, 10) : 7;
    if (n < 64 || n > 16384 || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: sgemm-peak [N in 64..16384 [REPS in 1..1000]]\n");
        return 2;
    }
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b), *c = malloc(count * sizeof *c);
    double *ms = malloc((size_t)reps * sizeof *ms);
    if (!a || !b || !c || !ms) {
        fprintf(stderr, "sgemm-peak: out of memory for N=%ld\n", n);
        return 1;
    }
    for (size_t i = 0; i < count; i++) {
        a[i] = (float)((i * 7u) % 13u) / 13.0f - 0.5f;
        b[i] = (float)((i * 5u) % 11u) / 11.0f - 0.5f;
        c[i] = 0.0f;
    }
    for (long r = -2; r < reps; r++) { /* two warm-up products */
        double t0 = now_ms();
        dnnl_status_t st = dnnl_sgemm('N', 'N', n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t1 = now_ms();
        if (st != dnnl_success) {
            fprintf(stderr, "sgemm-peak: dnnl_sgemm failed (status %d)\n", (int)st);
            return 1;
        }
        if (r >= 0)
            ms[r] = t1 - t0;
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_double);
    double med = reps % 2 ? ms[reps / 2] : (ms[reps / 2 - 1] + ms[reps / 2]) / 2.0;
    double flop = 2.0 * (double)n * (double)n * (double)n;
    printf("n=%ld\nmedian_ms=%.3f\ngflops=%.2f\nbest_gflops=%.2f\n", n, med, flop / med / 1e6,
           flop / ms[0] / 1e6);
    free(a);
    free(b);
    free(c);
    free(ms);
    return 0;
}
