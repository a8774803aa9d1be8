"""Metrics: Prometheus text format, served over HTTP on loopback."""

import urllib.request

import pytest

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


def test_http_endpoint():
    m = Metrics()
    m.inc("holds", 3)
    with MetricsServer(m, port=0) as srv:
        body = urllib.request.urlopen(srv.url, timeout=5).read().decode()
        assert "vmp_deploy_holds_total 3" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(srv.url.replace("/metrics", "/nope"), timeout=5)
