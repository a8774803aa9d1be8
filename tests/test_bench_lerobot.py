"""vmp-bench lerobot refuses bad arguments by name before it exports, trains or re-executes anything, and reuses a
finished training only for the same budget and spec."""

import json
import signal
import sys

import pytest

from vmp.bench.lerobot import batch_of, contender, kept_training, main, run_for, run_spec


@pytest.mark.parametrize("args, message", [
    (["--tag", "a/b"], "--tag 'a/b': letters, digits"),
    (["--minutes", "0"], "--minutes 0.0: must be positive"),
    (["--timeline-episodes", "-1"], "--timeline-episodes -1: must be positive (or 0)"),
    (["--steps", "0"], "--steps 0: must be positive"),
    (["--batch-size", "0"], "--batch-size 0: must be positive"),
    (["--tokenizer-steps", "-5"], "--tokenizer-steps -5: must be positive"),
    (["--ckpt-every", "bso=200"], "--ckpt-every bso=200: no contender 'bso'"),
    (["--ckpt-every", "beso=x"], "--ckpt-every beso=x: the steps must be a positive integer"),
])
def test_bad_arguments_are_refused_by_name(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "runs"), "--lerobot-python", str(tmp_path / "no-python")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing exported or trained


def test_a_rerun_reuses_a_training_only_with_the_same_budget_and_spec(tmp_path):
    spec = contender("beso", "image")
    record = tmp_path / "beso" / "train.json"
    assert kept_training(record, 20.0, spec) is None  # nothing trained yet
    record.parent.mkdir()
    record.write_text(json.dumps({"checkpoints": [], "minutes_budget": 20.0, "spec": spec}))
    assert kept_training(record, 20.0, spec)["spec"] == spec
    assert kept_training(record, 12.0, spec) is None  # another budget
    assert kept_training(record, 20.0, {**spec, "steps": spec["steps"] + 1}) is None  # another schedule
    record.write_text(json.dumps({"checkpoints": [], "minutes_budget": 20.0}))  # written before specs were kept
    assert kept_training(record, 20.0, spec) is None


def test_command_line_overrides_reach_each_contenders_spec():
    assert run_spec("beso", "lowdim") == contender("beso", "lowdim")  # no overrides: the contender as defined
    every, one = run_spec("beso", "lowdim", 3000, {None: 200, "lerobot_diffusion": 400}, 64), \
        run_spec("lerobot_diffusion", "lowdim", 3000, {None: 200, "lerobot_diffusion": 400}, 32)
    assert (every["steps"], every["ckpt_every"], batch_of(every)) == (3000, 200, 64)
    assert (one["steps"], one["ckpt_every"], batch_of(one)) == (3000, 400, 32)
    assert sum("batch_size" in a for a in every["args"]) == 1  # replaced, not appended beside the old one
    default = run_spec("lerobot_diffusion_default", "lowdim", 3000, {None: 200}, 64)
    assert (default["steps"], default["ckpt_every"], batch_of(default)) == (4, 4, 64)  # measured, not trained
    image_act = run_spec("lerobot_act", "image", batch_size=16)
    assert batch_of(image_act) == 16 and "--policy.pretrained_backbone_weights=null" in image_act["args"]
    carp = run_spec("carp", "lowdim", batch_size=64, tokenizer_steps=600)
    assert [a for a in carp["tokenizer"] if a.startswith("training.steps=")] == ["training.steps=600"]
    assert batch_of(carp) == 64 and "training.batch_size=64" not in carp["tokenizer"]  # the tokenizer keeps its batch
    assert run_spec("beso", "lowdim", tokenizer_steps=600) == contender("beso", "lowdim")  # no tokenizer: unchanged


def test_the_suites_comparison_commands_parse(tmp_path):
    from vmp.bench.suite import LEROBOT

    for _, command in LEROBOT:
        assert command[0] == "lerobot"
        with pytest.raises(SystemExit) as exit_info:  # past argument checks, stopped at the missing environment
            main([*command[1:], "--lerobot-python", str(tmp_path / "no-python")])
        assert "no LeRobot environment" in str(exit_info.value.code)


def test_the_budget_stop_interrupts_a_trainer_started_in_the_background(tmp_path):
    """A background shell (`nohup vmp-bench lerobot ... &`) hands its children SIGINT ignored; the stop at the end of
    the budget must still reach the trainer as an interrupt (its own save), not 30 s later as a kill."""
    child = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True)")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_for([sys.executable, "-c", child], minutes=0.05, log_path=tmp_path / "train.log")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "train.log").read_text().strip() == "interrupted"
