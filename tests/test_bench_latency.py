"""vmp-bench latency's engine options: --compile reaches the deployment engine and is recorded apart; without
--engine it is refused by name."""

import pytest

import vmp.real.engine
from vmp.bench import latency


def test_compile_reaches_the_engine_and_its_record_is_kept_apart(monkeypatch, tmp_path):
    import json

    asked = []
    real_engine = vmp.real.engine.InferenceEngine

    def engine(policy, device="cpu", compile=False, **kw):  # what the bench asked for; built eager (no minutes here)
        asked.append(compile)
        return real_engine(policy, device=device, **kw)

    monkeypatch.setattr(vmp.real.engine, "InferenceEngine", engine)
    args = ["--obs", "lowdim", "--heads", "beso", "--variants", "3-step euler", "--engine", "--repeats", "2",
            "--out-dir", str(tmp_path)]
    latency.main([*args, "--compile"])
    assert asked == [True]
    (path,) = tmp_path.glob("*.json")  # the records go where --out-dir says
    record = json.loads(path.read_text())
    assert path.name == "latency_lowdim_beso_3-step-euler_engine_compiled_cpu.json"
    assert record["command"].endswith("--engine --compile")
    metrics = record["metrics"]
    # a chunk drives n_action_steps control steps: actions per second are that many times the chunks per second
    assert metrics["chunks_per_s"] == pytest.approx(1e3 / metrics["mean_ms"])
    assert metrics["actions_per_s"] == pytest.approx(metrics["n_action_steps"] * metrics["chunks_per_s"])
    latency.main(args)
    assert asked == [True, False] and (tmp_path / "latency_lowdim_beso_3-step-euler_engine_cpu.json").exists()


def test_compile_without_the_engine_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        latency.main(["--obs", "lowdim", "--heads", "beso", "--compile"])
    err = capsys.readouterr().err
    assert "--compile times the deployment engine's compiled path: it needs --engine" in err


def test_a_robosuite_task_times_its_own_observations_and_skips_the_heads_of_other_tasks(tmp_path):
    import json

    latency.main(["--task", "can", "--obs", "lowdim", "--heads", "beso", "divla", "--variants", "3-step euler",
                  "10-step ddim, reasoning cached", "--repeats", "2", "--out-dir", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")  # Diffusion-VLA reads an instruction: timed on Meta-World, not on Can
    record = json.loads(path.read_text())
    assert path.name == "latency_can_lowdim_beso_3-step-euler_cpu.json"
    assert record["task"] == "can" and "--task can" in record["command"]
    # Can's object state is 14-d (Lift's 10-d): the head was built on Can's observations
    policy, _ = latency.build("can", "lowdim", "beso", {"sampler": "euler", "n_steps": 3})
    assert policy.obs_shapes["object"] == (14,)
