"""cffi build script for `native._sha512chain` (API mode, out of line).

setup.py points `cffi_modules` at `ffibuilder`. No -march=native: SIMD kernels carry their own
`target(...)` attributes and are picked at run time. Extra compiler/linker flags (e.g. sanitizers)
come from the environment: DYNWORK_NATIVE_CFLAGS and DYNWORK_NATIVE_LDFLAGS.
"""

import os
import pathlib
import re

from cffi import FFI  # type: ignore[import-untyped]  # cffi ships no type information

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = [
    "sha512chain.c",
    "sha512_scalar.c",
    "sha512_lanes.c",
    "sha512_avx2.c",
    "sha512_avx512.c",
    "sha512_avx512x8.c",
    "sha512_avx512x4.c",
]


def _declarations(header: pathlib.Path) -> str:
    """The header as cdef reads it: prototypes kept, guards and includes dropped, and each
    constant declared as `#define NAME ...` so its value comes from the real header."""
    keep = []
    for line in header.read_text().splitlines():
        constant = re.match(r"#define (DW_\w+) -?\d+$", line)
        if constant:
            keep.append(f"#define {constant.group(1)} ...")
        elif not line.startswith("#"):
            keep.append(line)
    return "\n".join(keep)


ffibuilder = FFI()
ffibuilder.cdef(_declarations(HERE / "sha512chain.h"))
ffibuilder.set_source(
    "native._sha512chain",
    '#include "sha512chain.h"',
    # setuptools insists on paths relative to the directory of setup.py, its working directory.
    sources=[os.path.relpath(HERE / s) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", *os.environ.get("DYNWORK_NATIVE_CFLAGS", "").split()],
    extra_link_args=os.environ.get("DYNWORK_NATIVE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
