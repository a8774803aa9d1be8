"""vmp-train end to end on a small synthetic store: learning, exact resume, checkpoints, torchrun (gloo)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from vmp.data.testing import LIFT_LOWDIM_KEYS, make_learnable_lift_store
from vmp.policies.checkpoint import load_policy, read_checkpoint
from vmp.policies.train import train

LIFT_KEYS = LIFT_LOWDIM_KEYS
make_store = make_learnable_lift_store


def compose_cfg(store: Path, run_dir: Path, *overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("train", overrides=[
            "task=lift", f"store={store}", f"run_dir={run_dir}", "policy.d_model=32", "policy.n_layers=1",
            "policy.n_heads=2", "training.batch_size=16", "training.warmup_steps=2", "training.val_ratio=0.2",
            "training.val_every=1000", "training.log_every=5", *overrides,
        ])


def test_training_learns_and_checkpoint_loads(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    cfg = compose_cfg(store, tmp_path / "run", "training.steps=150", "training.lr=2e-3", "training.ckpt_every=1000",
                      "training.val_every=150")
    ckpt = train(cfg)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert rows[-1]["val_loss"] and int(rows[-1]["step"]) == 150
    assert losses[-1] < 0.6 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    payload = read_checkpoint(ckpt)
    assert payload["step"] == 150 and payload["git_rev"]
    policy, loaded_cfg = load_policy(ckpt, overrides={"n_steps": 5})
    assert loaded_cfg.policy.n_steps == 5 and policy.config.n_steps == 5
    obs = {k: torch.zeros(2, 2, d) for k, d in LIFT_KEYS.items()}
    assert policy.predict_action_chunk(obs).shape == (2, 16, 7)
    with pytest.raises(KeyError, match="not a setting"):
        load_policy(ckpt, overrides={"n_stepz": 5})


def test_resume_continues_exactly(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    # 12 windows per batch of 16 over ~250 train windows: the resumed run crosses an epoch boundary mid-way too.
    full = train(compose_cfg(store, tmp_path / "full", "training.steps=24", "training.ckpt_every=12"))
    # Stopped after 12 steps of a 24-step schedule, then resumed: must match the uninterrupted run.
    train(compose_cfg(store, tmp_path / "part", "training.steps=24", "training.ckpt_every=100", "training.stop_after=12"))
    assert read_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")["step"] == 12
    resumed = train(compose_cfg(store, tmp_path / "part", "training.steps=24", "training.ckpt_every=12", "resume=true"))
    a, b = read_checkpoint(full), read_checkpoint(resumed)
    assert a["step"] == b["step"] == 24
    tensors = {k: v for k, v in a["policy"].items() if isinstance(v, torch.Tensor)}
    assert len(tensors) > 20
    for key, value in tensors.items():
        torch.testing.assert_close(b["policy"][key], value, rtol=1e-5, atol=1e-6, msg=f"parameter {key} differs")
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_bad_store_path_is_named(tmp_path):
    with pytest.raises(Exception, match="nope.zarr"):
        train(compose_cfg(tmp_path / "nope.zarr", tmp_path / "run", "training.steps=2"))


def _torchrun(store: Path, run_dir: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "vmp.policies.train", "task=lift", f"store={store}", f"run_dir={run_dir}", "policy.d_model=32",
           "policy.n_layers=1", "policy.n_heads=2", "training.warmup_steps=2", *overrides]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # never leave ranks behind
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_resumed_as_one_match_one_process(tmp_path):
    """Two gloo processes train 6 steps of a 12-step run and stop; one process resumes it (accumulating two
    micro-batches per step where each process computed one). The parameters match an uninterrupted one-process run of
    the same effective batch: same samples, same micro-batches, same noise, differing only in the order float sums
    are taken (DDP's all-reduce against accumulation): tolerance rtol 1e-4, atol 5e-5. (The widest gap, ~2e-5, is in
    attention's key bias: its gradient is zero in exact arithmetic, so Adam normalises float noise into steps.)"""
    store = make_store(tmp_path / "s.zarr")
    common = ["training.steps=12", "training.batch_size=16", "training.micro_batch_size=8", "training.val_ratio=0",
              "training.log_every=3", "training.lr=1e-3"]
    _torchrun(store, tmp_path / "ddp", *common, "training.stop_after=6", "training.ckpt_every=100")
    part = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pt")
    assert part["step"] == 6 and part["budget"]["processes"] == 2 and part["budget"]["batch_size"] == 16
    assert "DistributedDataParallel" not in str(list(part["policy"])[:3])  # the bare policy's keys, not module.*
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks (OMP_NUM_THREADS=1): make test's two threads sum otherwise
    try:
        resumed = read_checkpoint(train(compose_cfg(store, tmp_path / "ddp", *common, "resume=true")))
        single = read_checkpoint(train(compose_cfg(store, tmp_path / "one", *common)))
    finally:
        torch.set_num_threads(threads)
    assert resumed["step"] == single["step"] == 12 and resumed["budget"]["processes"] == 1
    tensors = {k: v for k, v in single["policy"].items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    moved = max((v - part["policy"][k]).abs().max().item() for k, v in tensors.items())
    assert moved > 1e-3  # the second half of the run changed the parameters: the comparison below is not vacuous
    for key, value in tensors.items():
        torch.testing.assert_close(resumed["policy"][key], value, rtol=1e-4, atol=5e-5, msg=f"parameter {key} differs")


def test_batch_split_and_data_order_do_not_depend_on_world_size():
    from vmp.policies.train import EpochSampler, accumulation_steps

    one = EpochSampler(100, seed=3, epoch=1, batch_size=16).indices
    two = [EpochSampler(100, seed=3, epoch=1, batch_size=16, rank=r, world=2).indices for r in (0, 1)]
    assert len(one) == 96  # 6 whole batches
    for b in range(6):  # global batch b: rank 0 holds its first half, rank 1 its second
        assert one[16 * b: 16 * b + 16] == two[0][8 * b: 8 * b + 8] + two[1][8 * b: 8 * b + 8]
    assert EpochSampler(100, seed=3, epoch=1, batch_size=16, start_batch=4).indices == one[64:]
    assert accumulation_steps(16, None, 2) == (8, 1) and accumulation_steps(16, 4, 2) == (4, 2)
    with pytest.raises(ValueError, match="training.micro_batch_size=3 must divide"):
        accumulation_steps(16, 3, 2)
    with pytest.raises(ValueError, match="training.batch_size=15 .* split evenly across 2 processes"):
        accumulation_steps(15, None, 2)


def test_gradient_accumulation_and_bf16(tmp_path):
    """Batch 16 in micro-batches of 4: four forward/backward passes per optimizer step; the step count and the
    effective batch the checkpoint records are the optimizer's. bf16 autocast (here on the CPU) computes the same
    losses as fp32 to bf16's precision. A precision other than fp32/bf16 is refused by name."""
    store = make_store(tmp_path / "s.zarr")
    common = ["training.steps=5", "training.micro_batch_size=4", "training.val_ratio=0", "training.log_every=1"]
    payload = read_checkpoint(train(compose_cfg(store, tmp_path / "fp32", *common)))
    assert payload["step"] == 5 and payload["budget"]["batch_size"] == 16
    train(compose_cfg(store, tmp_path / "bf16", *common, "training.precision=bf16"))

    def losses(run):
        with open(tmp_path / run / "metrics.csv", newline="") as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]

    fp32, bf16 = losses("fp32"), losses("bf16")
    assert len(fp32) == len(bf16) == 5
    assert fp32[0] == pytest.approx(bf16[0], rel=0.05)  # the same first step (same data, noise and weights)
    assert bf16 != fp32  # autocast did run in bf16
    with pytest.raises(ValueError, match="training.precision='fp16' must be fp32 or bf16"):
        train(compose_cfg(store, tmp_path / "bad", "training.steps=2", "training.precision=fp16"))


def test_sigterm_saves_a_checkpoint(tmp_path):
    """A pre-empted run (SIGTERM) leaves a checkpoint at the step it reached, and resume continues from it."""
    import signal
    import time

    store = make_store(tmp_path / "s.zarr")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "vmp.policies.train", "task=lift", f"store={store}", f"run_dir={run_dir}",
           "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2", "training.batch_size=16",
           "training.steps=100000", "training.log_every=5", "training.ckpt_every=100000", "training.val_ratio=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    payload = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert 10 <= payload["step"] < 100000, err.decode()[-2000:]
    assert b"KeyboardInterrupt: signal 15" in err  # raised by the loop at a step, not by the handler


def test_sigterm_handler_only_records_the_signal():
    """The handler itself never raises (an exception raised there once landed inside logging's lock and was
    swallowed): the training loop raises at its next step instead."""
    import signal

    from vmp.policies.train import StopRequest

    stop = StopRequest()
    stop.check()  # nothing asked yet
    assert stop(signal.SIGTERM, None) is None and stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        stop.check()


def test_checkpoints_refuse_what_they_do_not_fit(tmp_path):
    """A checkpoint records its head and task keys/shapes: a resume under another head, a load whose weights come from
    another head, and vmp-eval on a task with other observations are refused naming both sides."""
    from vmp.policies.checkpoint import save_checkpoint
    from vmp.sim.evaluate import refuse_all_errored

    store = make_store(tmp_path / "s.zarr")
    ckpt = train(compose_cfg(store, tmp_path / "run", "training.steps=2"))
    payload = read_checkpoint(ckpt)
    assert payload["io"]["head"] == "beso" and payload["io"]["obs"]["eef_pos"] == [3]
    with pytest.raises(ValueError, match=r"head 'beso' vs 'ddpm'"):
        train(compose_cfg(store, tmp_path / "run", "policy=ddpm", "policy.d_model=32", "training.steps=4", "resume=true"))
    swapped = dict(payload, cfg=payload["cfg"].replace("name: beso", "name: ddpm", 1))
    save_checkpoint(tmp_path / "swapped.pt", {k: v for k, v in swapped.items() if k not in ("format", "version")})
    with pytest.raises(ValueError, match=r"weights does not fit its config .*head 'beso' vs 'ddpm'"):
        load_policy(tmp_path / "swapped.pt")
    refused = subprocess.run([sys.executable, "-m", "vmp.sim.evaluate", f"checkpoint={ckpt}", "task=blockpush",
                              "n_episodes=1"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "does not fit task=blockpush" in refused.stderr
    assert "observation 'block_pos'" in refused.stderr
    errored = {"n_episodes": 2, "n_errors": 2, "per_episode": [{"error": "KeyError: 'x'"}, {"error": "KeyError: 'x'"}]}
    with pytest.raises(SystemExit, match="all 2 episodes failed .*KeyError"):
        refuse_all_errored(errored, tmp_path)
    refuse_all_errored({**errored, "n_errors": 1}, tmp_path)  # one good episode is a measurement


def test_run_folder_resume_log_and_option_types(tmp_path):
    """checkpoint=<run folder> finds its latest.pt; a resumed run's metrics.csv holds each step once; a mistyped
    training option is refused naming it."""
    store = make_store(tmp_path / "s.zarr")
    run = tmp_path / "run"
    train(compose_cfg(store, run, "training.steps=20", "training.ckpt_every=10", "training.log_every=5"))
    assert load_policy(run)[1].policy.name == "beso"  # the run folder, not only the file
    with pytest.raises(FileNotFoundError, match="folder without checkpoints/latest.pt"):
        load_policy(tmp_path)
    # Pretend the run died after logging step 20 but with its last checkpoint at step 10: resume from there.
    payload = read_checkpoint(run)
    part = train(compose_cfg(store, tmp_path / "part", "training.steps=20", "training.ckpt_every=10",
                             "training.log_every=5", "training.stop_after=10"))
    with open(tmp_path / "part" / "metrics.csv", "a", newline="") as f:  # rows logged after the checkpoint
        csv.writer(f).writerows([[15, 1.0], [20, 1.0]])
    train(compose_cfg(store, tmp_path / "part", "training.steps=20", "training.ckpt_every=10", "training.log_every=5",
                      "resume=true"))
    with open(tmp_path / "part" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [5, 10, 15, 20] and read_checkpoint(part)["step"] == 20 and payload["step"] == 20
    with pytest.raises(ValueError, match=r"training.steps='ten' must be int"):
        train(compose_cfg(store, tmp_path / "bad", "training.steps=ten"))


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    """vmp-train killed with SIGKILL (no chance to save) after a checkpoint, then resume=true: the final parameters
    equal an uninterrupted run's, and metrics.csv holds every logged step once."""
    import signal
    import time

    store = make_store(tmp_path / "s.zarr")
    common = ["task=lift", f"store={store}", "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2",
              "training.batch_size=16", "training.warmup_steps=2", "training.val_ratio=0", "training.steps=400",
              "training.ckpt_every=20", "training.log_every=20", "device=cpu"]
    full = train(compose_cfg(store, tmp_path / "full", *common[1:], "training.val_ratio=0"))
    run = tmp_path / "killed"
    # the same thread count as this process, which runs the other two: float reductions then match bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "vmp.policies.train", *common, f"run_dir={run}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (ckpt.exists() and read_checkpoint(ckpt)["step"] >= 60):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(ckpt)["step"]
    assert 60 <= killed_at < 400
    resumed = train(compose_cfg(store, run, *common[1:], "resume=true"))
    a, b = read_checkpoint(full), read_checkpoint(resumed)
    for key, value in a["policy"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b["policy"][key], value, rtol=1e-5, atol=1e-6, msg=f"parameter {key} differs")
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(20, 401, 20))


def test_rerunning_into_a_used_run_dir_is_refused(tmp_path):
    """A second vmp-train into the same run_dir without resume=true would replace the only checkpoint and truncate
    metrics.csv: refused naming the options; overwrite=true starts afresh on purpose."""
    store = make_store(tmp_path / "s.zarr")
    train(compose_cfg(store, tmp_path / "run", "training.steps=10", "training.log_every=5"))
    with pytest.raises(FileExistsError, match=r"already holds a checkpoint \(step 10\): resume=true .* overwrite=true"):
        train(compose_cfg(store, tmp_path / "run", "training.steps=4"))
    # refused before the data is read: with a store that does not exist, the used run_dir is what it names
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train(compose_cfg(tmp_path / "absent.zarr", tmp_path / "run", "training.steps=4"))
    assert read_checkpoint(tmp_path / "run")["step"] == 10  # untouched
    train(compose_cfg(store, tmp_path / "run", "training.steps=4", "training.log_every=2", "overwrite=true"))
    assert read_checkpoint(tmp_path / "run")["step"] == 4


def test_best_and_interval_checkpoints_beside_latest(tmp_path):
    """best.pt is the step of lowest validation loss; step_N.pt every keep_every steps; TensorBoard scalars beside
    metrics.csv; overwrite=true leaves nothing of the old run behind."""
    store = make_store(tmp_path / "s.zarr")
    run = tmp_path / "run"
    train(compose_cfg(store, run, "training.steps=12", "training.val_every=3", "training.ckpt_every=100",
                      "training.keep_every=4", "training.log_every=3"))
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == ["step_0000004.pt", "step_0000008.pt", "step_0000012.pt"]
    assert read_checkpoint(ckpts / "step_0000008.pt")["step"] == 8
    with open(run / "metrics.csv") as f:
        val = {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]}
    assert sorted(val) == [3, 6, 9, 12]
    best_step = min(val, key=val.get)
    best = read_checkpoint(ckpts / "best.pt")
    assert best["step"] == best_step and best["best"]["value"] == pytest.approx(val[best_step])
    assert any((run / "tensorboard").iterdir())
    train(compose_cfg(store, run, "training.steps=2", "overwrite=true", "training.val_every=1000"))
    assert not list(ckpts.glob("step_*.pt")) and read_checkpoint(ckpts / "best.pt")["step"] == 2  # the new run's
