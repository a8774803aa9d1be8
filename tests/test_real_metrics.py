"""Metrics: Prometheus text format, served over HTTP on loopback."""

import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmp.real.metrics import Metrics, MetricsServer


def test_prometheus_text_and_summary():
    m = Metrics(prefix="t")
    m.inc("dropped_frames", 2, help="dropped")
    m.set("tick", 7)
    for v in [0.01, 0.02, 0.03]:
        m.observe("loop_period_seconds", v)
    text = m.prometheus()
    assert "# TYPE t_dropped_frames_total counter\nt_dropped_frames_total 2" in text
    assert "t_tick 7" in text
    assert 't_loop_period_seconds{quantile="0.5"} 0.02' in text
    assert "t_loop_period_seconds_count 3" in text
    s = m.summary()
    assert s["counters"]["dropped_frames"] == 2 and s["summaries"]["loop_period_seconds"]["count"] == 3
    with pytest.raises(ValueError, match="Prometheus"):
        m.inc("bad name")
    # a Prometheus scraper reads it back: prometheus-client's own parser
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["t_dropped_frames"].type == "counter" and families["t_dropped_frames"].samples[0].value == 2
    quantiles = {s.labels.get("quantile"): s.value for s in families["t_loop_period_seconds"].samples}
    assert quantiles["0.99"] == pytest.approx(0.0298) and families["t_tick"].samples[0].value == 7


def test_http_endpoint():
    m = Metrics()
    m.inc("holds", 3)
    with MetricsServer(m, port=0) as srv:
        body = urllib.request.urlopen(srv.url, timeout=5).read().decode()
        assert "vmp_deploy_holds_total 3" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(srv.url.replace("/metrics", "/nope"), timeout=5)


def test_idle_connections_are_dropped_and_their_threads_end():
    import socket
    import threading
    import time

    m = Metrics()
    m.inc("holds", 1)
    with MetricsServer(m, port=0, timeout_s=0.5) as srv:
        host, port = srv.httpd.server_address[:2]
        before = threading.active_count()
        idle = [socket.create_connection((host, port), timeout=2) for _ in range(50)]
        time.sleep(0.3)
        assert threading.active_count() > before  # a thread per connection while they are open...
        time.sleep(1.5)
        assert threading.active_count() <= before + 1  # ...gone once the idle timeout closed them
        assert all(s.recv(1) == b"" for s in idle)  # closed by the server
        body = urllib.request.urlopen(srv.url, timeout=5).read().decode()
        assert "vmp_deploy_holds_total 1" in body
        for s in idle:
            s.close()


@pytest.fixture(scope="module")
def served():
    m = Metrics()
    m.inc("holds", 2)
    with MetricsServer(m, port=0, timeout_s=0.3) as srv:
        yield srv


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.binary(max_size=300))
def test_fuzzed_requests_never_take_the_endpoint_down(served, request):
    import socket

    host, port = served.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        try:
            s.recv(65536)
        except OSError:
            pass
    assert "vmp_deploy_holds_total 2" in urllib.request.urlopen(served.url, timeout=5).read().decode()
