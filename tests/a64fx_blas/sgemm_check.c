/* SGEMM check for an OpenBLAS built for aarch64, run under qemu-user (QEMU_CPU=a64fx).
 *
 * Prints one JSON line: the core OpenBLAS chose (openblas_get_corename), its build
 * configuration (openblas_get_config), and for each size the largest relative error of
 * cblas_sgemm against a naive reference computed in double precision.
 *
 * Built two ways by tests/test_a64fx_blas.py:
 *   - linked statically against a cross-built libopenblas.a (no argument);
 *   - dynamically, with the library to load as argv[1] (e.g. the libopenblas that torch's
 *     aarch64 wheel bundles): its symbols are taken with dlsym.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);
typedef char *(*str_fn)(void);

#ifdef STATIC_OPENBLAS
void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
char *openblas_get_corename(void);
char *openblas_get_config(void);
#endif

enum { RowMajor = 101, NoTrans = 111 };

static unsigned long long state = 88172645463325252ULL;
static float rnd(void) { /* xorshift64: the same matrices on every run */
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return (float)((state >> 11) % 2001) / 1000.0f - 1.0f;
}

static double check(sgemm_fn sgemm, int m, int n, int k) {
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n), *c = malloc(sizeof(float) * m * n);
    double worst = 0;
    for (int i = 0; i < m * k; i++) a[i] = rnd();
    for (int i = 0; i < k * n; i++) b[i] = rnd();
    for (int i = 0; i < m * n; i++) c[i] = 0;
    sgemm(RowMajor, NoTrans, NoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double ref = 0, mag = 0;
            for (int p = 0; p < k; p++) { ref += (double)a[i * k + p] * b[p * n + j]; mag += fabs((double)a[i * k + p] * b[p * n + j]); }
            double err = fabs(c[i * n + j] - ref) / (mag > 1e-30 ? mag : 1.0);
            if (err > worst || err != err) worst = err != err ? INFINITY : err;
        }
    free(a); free(b); free(c);
    return worst;
}

int main(int argc, char **argv) {
    sgemm_fn sgemm; str_fn corename, config;
#ifdef STATIC_OPENBLAS
    (void)argc; (void)argv;
    sgemm = (sgemm_fn)cblas_sgemm; corename = openblas_get_corename; config = openblas_get_config;
#else
    if (argc < 2) { fprintf(stderr, "usage: %s LIBOPENBLAS.so\n", argv[0]); return 2; }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    corename = (str_fn)dlsym(h, "openblas_get_corename");
    config = (str_fn)dlsym(h, "openblas_get_config");
    if (!sgemm || !corename || !config) { fprintf(stderr, "dlsym: missing OpenBLAS symbol\n"); return 2; }
#endif
    /* sizes that are not multiples of any vector length, and one spanning several blocks */
    static const int sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {96, 80, 64}, {129, 67, 257}};
    printf("{\"corename\": \"%s\", \"config\": \"%s\", \"max_rel_err\": {", corename(), config());
    for (unsigned s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        printf("%s\"%dx%dx%d\": %.3g", s ? ", " : "", sizes[s][0], sizes[s][1], sizes[s][2],
               check(sgemm, sizes[s][0], sizes[s][1], sizes[s][2]));
    printf("}}\n");
    return 0;
}
