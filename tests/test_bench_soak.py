"""vmp-bench soak: a short soak with every fault kind (dropped and late frames, slow inference and server deaths with
reconnection in one long daemon run, then a killed and a stalled inference process and a lost robot) records every
episode it runs and misses no stop; the schedule and the growth figure on their own."""

import json

import numpy as np
import pytest

from vmp.bench import soak


def test_long_segments_share_what_the_other_segments_leave():
    # 60 min, 6 long and 4 ending segments left (20 s start-up, 35 s each ending run): 9.4 min of running each
    assert soak.running_share(3600, 6, 4, 20, 35, 15, 600) == pytest.approx((3600 - 4 * 35 - 6 * 20) / 6)
    assert soak.running_share(3600, 1, 0, 20, 35, 15, 600) == 600  # at most a segment's longest
    assert soak.running_share(10, 2, 3, 20, 35, 15, 600) == 15  # at least its shortest: every kind runs
    assert set(soak.DEFAULT_KINDS) == set(soak.KINDS)


def test_growth_compares_the_last_fifth_with_the_first_after_the_warmup():
    t = np.arange(0, 600, 2.0)
    v = np.where(t < 90, 50.0, 100.0)  # start-up, then flat
    assert soak.growth(t, v, warmup_s=90) == pytest.approx(0.0)
    # +1 MiB a minute: medians of the fifths at 140 s and 548 s
    assert soak.growth(t, v + t / 60, warmup_s=90) == pytest.approx((100 + 548 / 60) / (100 + 140 / 60) - 1)
    short = np.arange(0, 60, 2.0)  # shorter than four warm-ups: the first fifth is the warm-up, the next the base
    values = np.r_[np.full(6, 50.0), np.full(6, 100.0), np.full(18, 120.0)]
    assert soak.growth(short, values, warmup_s=90) == pytest.approx(0.2)
    assert soak.growth(short[:4], short[:4], warmup_s=90) is None


@pytest.mark.slow
def test_short_soak_with_every_fault_records_every_episode_and_misses_no_stop(tmp_path):
    out = tmp_path / "soak_short.json"
    kinds = "mixed,inference_killed,inference_stalled,robot_lost"
    try:
        soak.main(["--seconds", "15", "--kinds", kinds, "--sample-s", "1", "--work-dir", str(tmp_path / "work"),
                   "--out", str(out)])
    except SystemExit:  # a check failed; which one is asserted below (growth in a 15 s run is not)
        pass
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert record["kind"] == "soak" and record["command"].startswith("vmp-bench soak --seconds 15")
    for key in ("episodes_run", "episodes_recorded", "required_stops", "missed_stops", "unexpected_stops",
                "faults_not_seen", "growth_max", "max_rss_growth", "max_thread_growth", "checks", "passed", "segments"):
        assert key in m, key
    assert [s["kind"] for s in m["segments"]] == kinds.split(",")
    assert m["episodes_run"] == m["episodes_recorded"] > 0 and m["checks"]["recorded_equals_run"]
    assert m["missed_stops"] == 0, [s["missed"] for s in m["segments"]]
    assert m["faults_not_seen"] == [], [s["evidence"] for s in m["segments"]]
    mixed, killed, stalled, lost = m["segments"]
    assert mixed["evidence"]["dropped_frames"] > 0 and mixed["evidence"]["server_deaths"] >= 1
    assert mixed["reasons"].get("robot_disconnected", 0) >= mixed["evidence"]["server_deaths"]
    assert {"control_rss_mb", "control_threads", "inference_rss_mb", "robot_rss_mb"} <= set(mixed["growth"])
    assert len(mixed["series"]["t_s"]) == len(mixed["series"]["control_rss_mb"]) > 5
    assert (killed["exit_code"], killed["reasons"]) == (1, {"inference_error": 1})
    assert (stalled["exit_code"], stalled["reasons"]) == (1, {"inference_stalled": 1})
    assert (lost["exit_code"], lost["reasons"]) == (1, {"robot_disconnected": 1})
