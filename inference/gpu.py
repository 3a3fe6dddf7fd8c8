"""How many GPUs this node has, asked of the NVIDIA driver through pynvml (extra ``gpu``).

Having onnxruntime-gpu or faiss-gpu installed says nothing about a GPU being present; the
driver does. Without pynvml or a driver the answer is 0 and every path falls back to the CPU.
"""

from __future__ import annotations

import contextlib
import functools


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
