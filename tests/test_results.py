"""Results records: one format, written atomically, with the machine and revision; one latency summary."""

import json

import numpy as np
import pytest

from vmp.results import latency_summary, make_record, write_record


def test_latency_summary_of_values_and_of_none():
    s = latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50_ms"] == 3.0 and s["max_ms"] == 100.0 and s["n"] == 5 and s["mean_ms"] == pytest.approx(22.0)
    assert 90.0 < s["p99_ms"] < 100.0
    empty = latency_summary(np.array([]))
    assert empty == {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None, "n": 0}
    json.dumps(empty, allow_nan=False)  # no NaN: valid JSON


def test_record_names_the_machine_and_revision_and_is_written_atomically(tmp_path):
    path = tmp_path / "results" / "success_toy.json"
    record = make_record("success", "toy", "lowdim", "beso", "3-step euler", {"success_rate": 0.5},
                         budget={"train_steps": 10}, command="vmp-eval checkpoint=x")
    write_record(path, record)
    back = json.loads(path.read_text())
    assert back["metrics"] == {"success_rate": 0.5} and back["command"] == "vmp-eval checkpoint=x"
    assert back["machine"]["cores"] >= 1 and "torch" in back["versions"] and back["git_rev"]
    assert back["device"].startswith("cpu (")
    with pytest.raises(TypeError):  # a record that cannot be written leaves the previous one whole
        write_record(path, {**record, "metrics": {"bad": object()}})
    assert json.loads(path.read_text()) == back
    assert sorted(p.name for p in path.parent.iterdir()) == ["success_toy.json"]  # no temporary left behind
