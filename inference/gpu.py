"""How many GPUs this node has, asked of the NVIDIA driver through pynvml (extra ``gpu``).

Having onnxruntime-gpu or faiss-gpu installed says nothing about a GPU being present; the
driver does. Without pynvml or a driver the answer is 0 and every path falls back to the CPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any


@functools.cache
def gpu_count() -> int:
    """Number of NVIDIA GPUs the driver reports; 0 when pynvml or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable GPU
        return None
    return pynvml


def nvml_status() -> str:
    """Why GPU readings are (un)available, for `pai doctor`."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (pip extra `gpu`)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return f"NVML unavailable: {exc}"
    return "ok"


def gpu_readings() -> list[dict[str, Any]]:
    """One dict per GPU: index, name, driver, memory used/total (bytes), utilisation (%)."""
    nvml = _nvml()
    if nvml is None:
        return []
    out: list[dict[str, Any]] = []
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            name = nvml.nvmlDeviceGetName(handle)
            out.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
                    "memory_used": int(memory.used),
                    "memory_total": int(memory.total),
                    "utilization": int(util.gpu),
                }
            )
    except Exception:  # a GPU that vanished mid-read reports nothing rather than crashing
        return out
    return out


def cuda_providers(device: str) -> list[str] | None:
    """onnxruntime providers for ``device``: None (auto) lets the engine prefer CUDA when a GPU
    is present; ``cuda`` insists (the engine refuses to load without it); ``cpu`` never uses it.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def faiss_gpus() -> int:
    """How many GPUs FAISS can use (0 for a CPU-only FAISS build)."""
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0
