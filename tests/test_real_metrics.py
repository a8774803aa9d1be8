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


def test_idle_connections_cost_no_threads_and_time_out():
    import socket
    import threading
    import time

    m = Metrics()
    m.inc("holds", 1)
    with MetricsServer(m, port=0, timeout_s=0.5, max_connections=64) as srv:
        before = threading.active_count()
        idle = [socket.create_connection(srv.address, timeout=2) for _ in range(50)]
        time.sleep(0.3)
        assert threading.active_count() == before  # one serving thread, however many connect
        assert "vmp_deploy_holds_total 1" in urllib.request.urlopen(srv.url, timeout=5).read().decode()
        time.sleep(1.0)
        assert all(s.recv(1) == b"" for s in idle)  # closed by the server once idle past timeout_s
        assert srv.counts["timed_out"] == 50
        for s in idle:
            s.close()


def test_a_flood_during_a_run_adds_no_threads_and_scrapes_keep_being_served():
    """300 idle connections plus 1000 rapid connect/close while the control loop runs: the control process's thread
    count stays that of a quiet run (the issue allows 10 more; it is 0) and every scrape is answered. Whether tick
    timing suffers is measured in bench/ (vmp-bench deploy --flood), not asserted here."""
    import socket
    import threading
    import time

    from vmp.real.engine import InferenceEngine
    from vmp.real.loop import ControlLoop, LoopConfig
    from vmp.real.safety import SafetyLayer
    from vmp.real.sim_robot import SimRobot
    from vmp.real.testing import ReachPolicy

    env = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"tol": 0.0, "max_episode_steps": 1000}, "control_hz": 50}
    with SimRobot(env) as robot:
        loop = ControlLoop(robot, InferenceEngine(ReachPolicy(n_obs_steps=1, horizon=8, n_action_steps=4)),
                           SafetyLayer([-1, -1], [1, 1], watchdog_s=60), LoopConfig(control_hz=50, max_ticks=150,
                                                                                   stop_on_success=False))
        result: dict = {}
        with MetricsServer(loop.metrics, port=0) as srv:
            runner = threading.Thread(target=lambda: result.update(res=loop.run_episode(seed=0)))
            runner.start()
            while "tick" not in loop.metrics.summary()["gauges"] and runner.is_alive():  # the loop is ticking
                time.sleep(0.01)
            quiet = threading.active_count()
            idle = [socket.create_connection(srv.address, timeout=2) for _ in range(300)]
            peak, bodies = threading.active_count(), []
            for i in range(1000):
                socket.create_connection(srv.address, timeout=2).close()
                if i % 100 == 0:
                    peak = max(peak, threading.active_count())
                    bodies.append(urllib.request.urlopen(srv.url, timeout=5).read().decode())
            runner.join(timeout=60)
            for s in idle:
                s.close()
        loop.close()
    # no thread per connection: never above the quiet count (one may end meanwhile: a fresh clone under load saw 12
    # quiet, 11 flooded)
    assert peak <= quiet, f"{peak} threads during the flood, {quiet} before it"
    assert len(bodies) == 10 and all("vmp_deploy_tick" in b for b in bodies)
    assert result["res"].reason == "max_ticks" and srv.counts["evicted"] > 0


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

    with socket.create_connection(served.address, timeout=2) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        try:
            s.recv(65536)
        except OSError:
            pass
    assert "vmp_deploy_holds_total 2" in urllib.request.urlopen(served.url, timeout=5).read().decode()
