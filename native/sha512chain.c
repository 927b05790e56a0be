/* Public entry points and backend dispatch. */
#include "sha512chain.h"
#include "sha512_impl.h"

static int selected = -1;

int dw_backend_supported(int backend)
{
    switch (backend) {
    case DW_BACKEND_SCALAR:
        return 1;
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") ? 1 : 0;
    case DW_BACKEND_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") ? 1 : 0;
#endif
    default:
        return 0;
    }
}

int dw_select_backend(int backend)
{
    if (!dw_backend_supported(backend))
        return -1;
    selected = backend;
    return 0;
}

int dw_current_backend(void)
{
    if (selected < 0) {
        int best = DW_BACKEND_AVX512;
        while (!dw_backend_supported(best))
            best--;
        selected = best;
    }
    return selected;
}

int dw_backend_lanes(int backend)
{
    switch (backend) {
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        return dw_avx2_kernel.lanes;
    case DW_BACKEND_AVX512:
        return dw_avx512_kernel.lanes;
#endif
    default:
        return 1;
    }
}

void dw_chain(const uint8_t *data, size_t len, uint64_t iterations, uint8_t *out)
{
    uint64_t st[8];
    dw_scalar_body(data, len, st);
    dw_scalar_steps(st, iterations - 1);
    dw_store_digest(st, out);
}

void dw_chain_many(size_t n, const uint8_t *const *data, const size_t *lens,
                   const uint64_t *iterations, uint8_t *out)
{
    switch (dw_current_backend()) {
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        dw_lanes_run(&dw_avx2_kernel, n, data, lens, iterations, out);
        return;
    case DW_BACKEND_AVX512:
        dw_lanes_run(&dw_avx512_kernel, n, data, lens, iterations, out);
        return;
#endif
    default:
        for (size_t i = 0; i < n; i++)
            dw_chain(data[i], lens[i], iterations[i], out + 64 * i);
    }
}
