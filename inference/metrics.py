"""Prometheus metrics of the daemon, in a registry of its own (``GET /metrics``).

GPU utilisation and memory are read through pynvml at scrape time when a GPU and the library
are present; without them the GPU series are simply absent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pai.inference.gpu import gpu_readings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _GpuCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = gpu_readings()
        if not readings:
            return
        util = GaugeMetricFamily("pai_gpu_utilization_ratio", "GPU utilisation", labels=["gpu"])
        used = GaugeMetricFamily("pai_gpu_memory_used_bytes", "GPU memory used", labels=["gpu"])
        total = GaugeMetricFamily("pai_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        for gpu in readings:
            label = [str(gpu["index"])]
            util.add_metric(label, gpu["utilization"] / 100.0)
            used.add_metric(label, gpu["memory_used"])
            total.add_metric(label, gpu["memory_total"])
        yield util
        yield used
        yield total


class Metrics:
    """Every series the daemon exports; one instance per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pai_requests", "HTTP requests", ["route", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "pai_request_seconds",
            "HTTP request latency",
            ["route", "model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pai_batch_size",
            "texts per inference batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "pai_batch_seconds",
            "inference time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("pai_tokens", "tokens embedded", ["model"], registry=r)
        self.tokens_per_second = Gauge(
            "pai_tokens_per_second",
            "tokens embedded per second over the last 10 s",
            ["model"],
            registry=r,
        )
        self.queue_depth = Gauge("pai_queue_depth", "texts waiting", ["model"], registry=r)
        self.cache_hits = Counter("pai_cache_hits", "embedding cache hits", registry=r)
        self.cache_misses = Counter("pai_cache_misses", "embedding cache misses", registry=r)
        self.rejected = Counter("pai_rejected", "requests refused with 429", ["reason"], registry=r)
        self.reloads = Counter("pai_reloads", "model reloads", ["outcome"], registry=r)
        r.register(_GpuCollector())
        self._windows: dict[str, deque[tuple[float, int]]] = {}

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        """A callback for the batcher: batch size, tokens, seconds."""
        window = self._windows.setdefault(model, deque())

        def observe(size: int, tokens: int, seconds: float) -> None:
            self.batch_size.labels(model).observe(size)
            self.batch_seconds.labels(model).observe(seconds)
            self.tokens.labels(model).inc(tokens)
            now = time.monotonic()
            window.append((now, tokens))
            while window and window[0][0] < now - 10:
                window.popleft()
            span = max(now - window[0][0], 1.0)
            self.tokens_per_second.labels(model).set(sum(t for _, t in window) / span)

        return observe

    def render(self, queue_depths: dict[str, int]) -> bytes:
        for model, depth in queue_depths.items():
            self.queue_depth.labels(model).set(depth)
        return bytes(generate_latest(self.registry))

    def request(self, route: str, model: str, status: int, seconds: float) -> None:
        labels: Any = (route, model or "-", str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
