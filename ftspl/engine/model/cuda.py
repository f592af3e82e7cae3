"""Whether onnxruntime's CUDA provider can really run on this machine, asked once per process.

On Linux x86_64 every install carries onnxruntime's GPU build (pyproject: the
two builds cannot share an environment), so "the CUDA provider is listed" says
nothing about the machine. ``--device auto`` and ``ftspl export --precision
auto`` ask this instead: a CUDA driver with at least one device, and the
provider's own library loading with its CUDA and cuDNN dependencies (from the
``[gpu]`` extra's wheels, which onnxruntime's ``preload_dlls`` finds, or the
system). On a machine without a GPU the driver check fails in microseconds, so
CPU users keep the CPU paths (graph cache, parallel encode runs, int8 export).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
DRIVER = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}
PROVIDER_LIB = {"linux": "libonnxruntime_providers_cuda.so", "win32": "onnxruntime_providers_cuda.dll"}


def _driver_devices() -> int:
    """CUDA devices the driver sees (0 when there is no driver)."""
    name = DRIVER.get(sys.platform)
    if name is None:
        return 0
    try:
        drv = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if drv.cuInit(0) != 0 or drv.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _provider_loads(ort) -> bool:
    """The CUDA provider's library and its CUDA/cuDNN dependencies load."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                preload()
            except (OSError, RuntimeError, ValueError) as exc:
                log.debug("onnxruntime.preload_dlls: %s", exc)
    lib = Path(ort.__file__).parent / "capi" / PROVIDER_LIB.get(sys.platform, "")
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        log.debug("CUDA provider does not load: %s", exc)
        return False
    return True


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when onnxruntime lists CUDA, a CUDA device is present and the provider's libraries load."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    if sys.platform not in DRIVER:  # no probe for this platform: trust the provider list
        return True
    return _driver_devices() > 0 and _provider_loads(ort)


__all__ = ["cuda_usable"]
