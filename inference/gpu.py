"""GPU facts through pynvml (nvidia-ml-py), when the library and a driver are present.

Every function returns an empty answer instead of failing on a machine without a GPU: the
daemon and `pai doctor` run the same code on CPU-only nodes.
"""

from __future__ import annotations

from typing import Any


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
    """onnxruntime providers for ``device`` (auto/cpu/cuda); None lets the engine decide."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        from pai.errors import UsageError

        raise UsageError(
            "device = cuda but onnxruntime has no CUDAExecutionProvider",
            hint="install the `gpu` extra (onnxruntime-gpu) or set device = auto",
        )
    return ["CPUExecutionProvider"]


def faiss_gpus() -> int:
    """How many GPUs FAISS can use (0 for a CPU-only FAISS build)."""
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0
