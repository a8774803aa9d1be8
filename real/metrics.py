"""Health and latency metrics: counters, gauges and sample summaries, exposed through prometheus-client (its
registry and text exposition) on loopback (``GET /metrics``) and summarised at exit. Thread-safe: the control loop
and the inference worker write, the one serving thread reads.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import selectors
import socket
import threading
import time
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


class MetricsServer:
    """Serves ``metrics.prometheus()`` at http://host:port/metrics (port 0 = any free) from ONE thread, whatever
    the clients do: a robot's timing must not depend on how many scrapers connect.

    The thread multiplexes its sockets with `selectors` instead of a thread per connection. At most
    ``max_connections`` are open at once: a new one closes the oldest that has not sent its request yet (so idle
    clients cannot lock a scraper out); a connection that has not sent a complete request within ``timeout_s`` is
    closed; a request larger than 8 KiB is refused with 431; the exposition is
    rendered at most every ``min_render_s`` (scrapes in between get the same text), so a flood of scrapes costs the
    control process no more than one render per interval."""

    MAX_REQUEST = 8192

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 5.0,
                 max_connections: int = 32, min_render_s: float = 0.1):
        self.metrics, self.timeout_s, self.max_connections, self.min_render_s = metrics, timeout_s, max_connections, min_render_s
        self.listener = socket.create_server((host, port), backlog=64)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.counts = collections.Counter()  # accepted, evicted, refused_full, timed_out, served, bad_request
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._rendered: tuple[float, bytes] = (-math.inf, b"")
        self.thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/metrics"

    def __enter__(self) -> "MetricsServer":
        self.thread.start()
        log.info("metrics at %s (one thread, at most %d connections)", self.url, self.max_connections)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self.thread.join(timeout=2)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    # ---- the serving thread ----
    def _serve(self) -> None:
        sel = self._selector
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[socket.socket, _Connection] = {}
        while not self._stop:
            now = time.monotonic()
            timeout = min((c.deadline for c in conns.values()), default=now + 1.0) - now
            for key, events in sel.select(timeout=max(0.0, min(timeout, 1.0))):
                sock = key.fileobj
                if sock is self.listener:
                    self._accept(conns)
                elif sock is not self._wake_r and sock in conns:
                    self._step(conns, conns[sock], events)
            now = time.monotonic()
            for conn in [c for c in conns.values() if c.deadline < now]:
                self.counts["timed_out"] += 1
                self._close(conns, conn)
        for conn in list(conns.values()):
            self._close(conns, conn)
        sel.close()

    def _accept(self, conns: dict) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving those already open
                log.warning("metrics: accept failed: %s", exc)
                return
            if len(conns) >= self.max_connections:  # make room: drop the oldest that has not finished its request
                waiting = [c for c in conns.values() if c.out is None]
                if not waiting:
                    self.counts["refused_full"] += 1
                    sock.close()
                    continue
                self.counts["evicted"] += 1
                self._close(conns, min(waiting, key=lambda c: c.deadline))
            self.counts["accepted"] += 1
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self.timeout_s)
            conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _step(self, conns: dict, conn: "_Connection", events: int) -> None:
        try:
            if conn.out is None and events & selectors.EVENT_READ:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(conns, conn)
                    return
                conn.inbox += data
                if b"\r\n\r\n" in conn.inbox or b"\n\n" in conn.inbox:
                    self._respond(conn)
                    self._selector.modify(conn.sock, selectors.EVENT_WRITE, None)
                elif len(conn.inbox) > self.MAX_REQUEST:
                    conn.out = _response(431, b"request too large\n", "text/plain")
                    self.counts["bad_request"] += 1
                    self._selector.modify(conn.sock, selectors.EVENT_WRITE, None)
            if conn.out is not None and events & selectors.EVENT_WRITE:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
                if not conn.out:
                    self._close(conns, conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the client went away
            self._close(conns, conn)

    def _respond(self, conn: "_Connection") -> None:
        line = conn.inbox.split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] not in ("GET", "HEAD"):
            conn.out = _response(400, b"only GET /metrics is served\n", "text/plain")
            self.counts["bad_request"] += 1
        elif line[1].split("?")[0] not in ("/metrics", "/"):
            conn.out = _response(404, b"only /metrics is served\n", "text/plain")
            self.counts["bad_request"] += 1
        else:
            now = time.monotonic()
            if now - self._rendered[0] >= self.min_render_s:
                self._rendered = (now, self.metrics.prometheus().encode())
            conn.out = _response(200, self._rendered[1] if line[0] == "GET" else b"", CONTENT_TYPE_LATEST,
                                 length=len(self._rendered[1]))
            self.counts["served"] += 1

    def _close(self, conns: dict, conn: "_Connection") -> None:
        conns.pop(conn.sock, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


class _Connection:
    __slots__ = ("sock", "deadline", "inbox", "out")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.inbox, self.out = sock, deadline, b"", None


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}


def _response(status: int, body: bytes, content_type: str, length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
