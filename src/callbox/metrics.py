"""Prometheus metrics in the text exposition format (0.0.4), with no dependency.

Metrics are created on a :class:`Registry` and rendered by ``GET /metrics``. Label values must come
from a closed set chosen by the caller (event names we know, error codes we define), never from
what a client sent, so the number of series stays bounded.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]

_START_TIME = time.time()


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if isinstance(v, int) or v.is_integer():
        return str(int(v))
    return repr(v)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(
        self, name: str, help: str, labels: Iterable[str] = (), initial: Iterable[tuple[str, ...]] = ()
    ) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {key: 0 for key in initial}

    def inc(self, *labels: str, value: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + value

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value set by the owner, or read from ``fn`` (returning {label values: value}) at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 fn: Callable[[], dict[tuple[str, ...], float]] | None = None) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {}
        self.fn = fn

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def inc(self, *labels: str, value: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + value

    def get(self, *labels: str) -> float:
        return (self.fn() if self.fn else self.values).get(labels, 0)

    def samples(self) -> list[str]:
        values = self.fn() if self.fn else self.values
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help)
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def samples(self) -> list[str]:
        out = []
        running = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += n
            out.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
        out.append(f"{self.name}_sum {_num(self.sum)}")
        out.append(f"{self.name}_count {running}")
        return out


def _process_metrics() -> list[str]:
    """The standard process_* metrics, read from /proc (Linux) where available."""
    lines: list[str] = []

    def add(name: str, kind: str, help: str, value: float) -> None:
        lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"])

    t = os.times()
    add("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", t.user + t.system)
    add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", _START_TIME)
    try:
        with open("/proc/self/statm") as f:
            vm_pages, rss_pages = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        add("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vm_pages * page)
        add("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss_pages * page)
        add("process_open_fds", "gauge", "Number of open file descriptors.", len(os.listdir("/proc/self/fd")))
        import resource

        add("process_max_fds", "gauge", "Maximum number of open file descriptors.",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except OSError:
        pass
    return lines


M = TypeVar("M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def add(self, metric: M) -> M:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self.metrics[metric.name] = metric
        return metric

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self.metrics.values():
            lines.extend(metric.header())
            lines.extend(metric.samples())
        lines.extend(_process_metrics())
        return ("\n".join(lines) + "\n").encode("utf-8")
