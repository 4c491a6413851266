"""Is the MPI library CUDA-aware (can MPI calls take device pointers)?

mpi4py has no query for it, so we ask the MPI library itself through the
extensions both big implementations export:
- Open MPI (>= 4.0): `int MPIX_Query_cuda_support(void)` (mpi-ext.h), 1 when the
  library was built with CUDA support *and* it is enabled at run time;
- MPICH (>= 4.0): `int MPIX_GPU_query_support(int gpu_type, int *is_supported)`
  with gpu_type MPIX_GPU_SUPPORT_CUDA = 0.
The symbols are looked up in the process (mpi4py has loaded libmpi) and in the
library that mpi4py reports. `FEDMPI_CUDA_AWARE=0|1` overrides the answer.

fedmpi stages through pinned host memory either way (see compress/ondevice.py:
the frame checksum and zstd run on the host); the answer is recorded next to
each GPU rank's device so a run says what the library could have done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "FEDMPI_CUDA_AWARE"


def _libraries() -> list[ctypes.CDLL]:
    libs = []
    try:
        libs.append(ctypes.CDLL(None))  # everything already loaded into the process
    except OSError:
        pass
    try:  # the library mpi4py found (its shared object lists it in /proc/self/maps)
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi" in line and "/" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            pass
    return libs


def query() -> tuple[bool | None, str]:
    """(CUDA-aware?, how we know); None when the library cannot tell."""
    forced = os.environ.get(ENV, "")
    if forced in ("0", "1"):
        return forced == "1", f"{ENV}={forced}"
    for lib in _libraries():
        fn = getattr(lib, "MPIX_Query_cuda_support", None)
        if fn is not None:
            fn.restype = ctypes.c_int
            return bool(fn()), "MPIX_Query_cuda_support"
        fn = getattr(lib, "MPIX_GPU_query_support", None)
        if fn is not None:
            flag = ctypes.c_int(0)
            fn.restype = ctypes.c_int
            if fn(ctypes.c_int(0), ctypes.byref(flag)) == 0:
                return bool(flag.value), "MPIX_GPU_query_support(CUDA)"
    return None, "the MPI library exports no CUDA-support query"


def describe() -> str:
    aware, how = query()
    state = {True: "CUDA-aware", False: "not CUDA-aware", None: "CUDA-awareness unknown"}[aware]
    return f"MPI {state} ({how}); pinned host staging"
