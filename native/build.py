"""cffi build script for `native._sha512chain` (API mode, out of line).

setup.py points `cffi_modules` at `ffibuilder`. No -march=native: SIMD kernels carry their own
`target(...)` attributes and are picked at run time. Extra compiler/linker flags (e.g. sanitizers)
come from the environment: DYNWORK_NATIVE_CFLAGS and DYNWORK_NATIVE_LDFLAGS.
"""
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["sha512chain.c", "sha512_scalar.c", "sha512_lanes.c", "sha512_avx2.c", "sha512_avx512.c"]

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void dw_chain(const uint8_t *data, size_t len, uint64_t iterations, uint8_t *out);
    void dw_chain_many(size_t n, const uint8_t *const *data, const size_t *lens,
                       const uint64_t *iterations, uint8_t *out);
    int dw_backend_status(int backend);
    int dw_backend_supported(int backend);
    int dw_select_backend(int backend);
    int dw_current_backend(void);
    int dw_backend_lanes(int backend);
    """
)
ffibuilder.set_source(
    "native._sha512chain",
    '#include "sha512chain.h"',
    # setuptools insists on paths relative to the directory of setup.py, its working directory.
    sources=[os.path.relpath(HERE / s) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"]
    + os.environ.get("DYNWORK_NATIVE_CFLAGS", "").split(),
    extra_link_args=os.environ.get("DYNWORK_NATIVE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
