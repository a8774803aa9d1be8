"""Health and latency metrics: counters, gauges and sample summaries, exposed through prometheus-client (its
registry and text exposition) on loopback (``GET /metrics``) and summarised at exit. Thread-safe: the control loop
and the inference worker write, the HTTP thread reads.
"""

from __future__ import annotations

import collections
import http.server
import logging
import math
import re
import threading
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
QUANTILES = (0.5, 0.9, 0.99)


class Metrics:
    """Metric names follow Prometheus rules; summaries keep the last ``window`` samples for quantiles."""

    def __init__(self, prefix: str = "vmp_deploy", window: int = 10000):
        self.prefix, self.window = prefix, window
        self._lock = threading.Lock()
        self._counters: dict[str, float] = collections.defaultdict(float)
        self._gauges: dict[str, float] = {}
        self._infos: dict[str, dict[str, str]] = {}
        self._samples: dict[str, collections.deque] = {}
        self._sums: dict[str, tuple[float, int]] = {}
        self._help: dict[str, str] = {}
        # Its own registry (not prometheus-client's global one): several daemons or tests in one process stay apart.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _check(self, name: str, help: str | None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name")
        if help:
            self._help[name] = help

    def inc(self, name: str, value: float = 1.0, help: str | None = None) -> None:
        with self._lock:
            self._check(name, help)
            self._counters[name] += value

    def set(self, name: str, value: float, help: str | None = None) -> None:
        with self._lock:
            self._check(name, help)
            self._gauges[name] = float(value)

    def info(self, name: str, labels: dict[str, str], help: str | None = None) -> None:
        """A text value, e.g. the policy's current reasoning: exposed as ``<prefix>_<name>_info{label="..."} 1``."""
        with self._lock:
            self._check(name, help)
            self._infos[name] = {str(k): str(v) for k, v in labels.items()}

    def observe(self, name: str, value: float, help: str | None = None) -> None:
        with self._lock:
            self._check(name, help)
            self._samples.setdefault(name, collections.deque(maxlen=self.window)).append(float(value))
            s, n = self._sums.get(name, (0.0, 0))
            self._sums[name] = (s + float(value), n + 1)

    def samples(self, name: str) -> np.ndarray:
        with self._lock:
            return np.asarray(self._samples.get(name, ()), dtype=np.float64)

    def counter(self, name: str) -> float:
        with self._lock:
            return self._counters.get(name, 0.0)

    def summary(self) -> dict[str, Any]:
        """Plain dict for logs/JSON: counters, gauges, infos (their labels), and p50/p99/max/count per summary."""
        with self._lock:
            out: dict[str, Any] = {"counters": dict(self._counters), "gauges": dict(self._gauges),
                                   "infos": {k: dict(v) for k, v in self._infos.items()}, "summaries": {}}
            for name, dq in self._samples.items():
                a = np.asarray(dq, dtype=np.float64)
                out["summaries"][name] = {"count": self._sums[name][1], "p50": _q(a, 0.5), "p99": _q(a, 0.99),
                                          "max": float(a.max()) if a.size else math.nan}
            return out

    def collect(self):
        """prometheus-client's collector protocol: the current values as metric families (summaries with quantiles
        over the last ``window`` samples, as the client's own Summary does not keep)."""
        with self._lock:
            for name, v in sorted(self._counters.items()):
                family = CounterMetricFamily(f"{self.prefix}_{name}", self._help.get(name, name))
                family.add_metric([], v)
                yield family
            for name, v in sorted(self._gauges.items()):
                yield GaugeMetricFamily(f"{self.prefix}_{name}", self._help.get(name, name), value=v)
            for name, labels in sorted(self._infos.items()):
                yield InfoMetricFamily(f"{self.prefix}_{name}", self._help.get(name, name), value=labels)
            for name, dq in sorted(self._samples.items()):
                full = f"{self.prefix}_{name}"
                a = np.asarray(dq, dtype=np.float64)
                family = Metric(full, self._help.get(name, name), "summary")
                for q in QUANTILES:
                    family.add_sample(full, {"quantile": str(q)}, _q(a, q))
                total, count = self._sums[name]
                family.add_sample(f"{full}_sum", {}, total)
                family.add_sample(f"{full}_count", {}, count)
                yield family

    def prometheus(self) -> str:
        """The text exposition format, as prometheus-client writes it."""
        return generate_latest(self.registry).decode()


def _q(a: np.ndarray, q: float) -> float:
    return float(np.quantile(a, q)) if a.size else math.nan


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


class MetricsServer:
    """Serves ``metrics.prometheus()`` at http://host:port/metrics from a daemon thread (port 0 = any free).

    A connection that sends no complete request within ``timeout_s`` is closed, so idle clients cannot pile up
    threads; the listen queue holds 64 pending connections."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 5.0):
        handler = _handler(metrics, timeout_s)
        self.httpd = _Server((host, port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def __enter__(self) -> "MetricsServer":
        self.thread.start()
        log.info("metrics at %s", self.url)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2)


def _handler(metrics: Metrics, timeout_s: float):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = timeout_s  # applied to the connection's socket: an idle client is dropped, its thread ends

        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served")
                return
            body = metrics.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("metrics http: " + fmt, *args)

    return Handler
