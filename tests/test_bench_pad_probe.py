"""vmp-bench pad-probe: on a store where the actions are written in the future frames and nowhere else, a trained
PAD's actions must follow the real future when it is given, and the attention it reports must be the block's own."""

import json

import numpy as np
import pytest
import torch
from einops import rearrange

from vmp.bench import pad_probe
from vmp.bench.report import tables
from vmp.data import EpisodeStore, KeySpec
from vmp.policies.train import train

from test_policies_pad import train_cfg  # PAD's test configuration: a 16 px camera and a 3-d state


def future_store(path, n_episodes: int = 16, length: int = 16):
    """Each step's frame is all bright or all dark at random; the action at t is +0.8 where frame t + 2 is bright,
    -0.8 where dark: only the future frame tells the action, never the current frame or the state."""
    schema = {"cam_image": KeySpec((16, 16, 3), "uint8"), "eef_pos": KeySpec((3,), "float32"),
              "action": KeySpec((2,), "float32")}
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, schema, {"task": "future", "control_hz": 10}) as store:
        for _ in range(n_episodes):
            bright = rng.integers(0, 2, length + 2)
            frames = np.broadcast_to((bright[:length] * 255).astype(np.uint8)[:, None, None, None], (length, 16, 16, 3))
            sign = (2.0 * bright[2:] - 1.0).astype(np.float32)
            store.append_episode({"cam_image": np.ascontiguousarray(frames),
                                  "eef_pos": rng.normal(size=(length, 3)).astype(np.float32),
                                  "action": np.stack([0.8 * sign, 0.8 * sign], -1)}, text={"language": "follow"})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    mp = pytest.MonkeyPatch()
    mp.setenv("VMP_CACHE", str(tmp / "cache"))
    store = future_store(tmp / "future.zarr")
    vae = train(train_cfg(store, tmp / "vae", "pad_vae", "policy.block_out_channels=[8,8]", "training.steps=20",
                          "training.batch_size=8"))
    ckpt = train(train_cfg(store, tmp / "pad", "pad", f"policy.vae={vae}", "policy.horizon=1",
                           "policy.n_action_steps=1", "policy.future_offsets=[2]", "policy.width=64",
                           "policy.depth=2", "policy.n_heads=2", "training.steps=600", "training.batch_size=32",
                           "training.lr=3e-3"))
    yield store, ckpt, tmp
    mp.undo()


def test_actions_follow_the_real_future_when_given_it(trained):
    store, ckpt, _ = trained
    result = pad_probe.probe(ckpt, str(store), n_windows=96, batch_size=32)
    overall = result["overall"]
    mse = overall["action_mse"]
    # told the real future frames, the head reads the actions from them; its own guesses and another window's
    # future are right half the time
    # (normalized actions are +-1: a coin toss scores 2, a right sign 0)
    assert mse["real_future"] < 0.8 and mse["own"] > 1.2 and mse["wrong_future"] > 1.2, mse
    assert overall["action_mse_difference"]["real_minus_own"]["ci95_high"] < 0
    # random bright/dark frames cannot be foreseen: the prediction is no better than copying the current frame
    assert all(r > 0.5 for r in overall["future_mse"]["predicted_over_copy"]), overall["future_mse"]
    shares = np.array([overall["action_attention"][g] for g in pad_probe.GROUPS])  # [groups, layers]
    np.testing.assert_allclose(shares.sum(0), 1.0, atol=1e-3)
    # beside it, what even attention would give: each group's share of the sequence. 16 px frames -> 8x8 latents
    # (one downsampling) -> 16 patches of 2x2 per frame: the current frame, eef_pos, one future frame, the action
    assert result["token_share"] == pytest.approx({"current": 16 / 34, "proprio": 1 / 34, "future": 16 / 34,
                                                   "action": 1 / 34})
    assert result["split"] == "all" and list(result["per_task"]) == ["follow"]


def test_reported_attention_reproduces_the_blocks_output(trained):
    """The probe recomputes attention from each block's qkv projection: its weights times the values must give the
    attention output the block passes to its output projection, for the action token."""
    _, ckpt, _ = trained
    from vmp.policies.checkpoint import load_policy

    policy, _ = load_policy(ckpt)
    captured = {}
    block = policy.dit.blocks[1]
    block.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    block.proj.register_forward_hook(lambda m, i, o: captured.__setitem__("attended", i[0]))
    obs = {"cam_image": torch.zeros(3, 1, 3, 16, 16, dtype=torch.uint8), "eef_pos": torch.randn(3, 1, 3),
           "language": ["follow"] * 3}
    policy.sample_joint(obs, torch.randn(3, policy.n_future * int(np.prod(policy.latent_shape)) + 2))
    weights = pad_probe.last_token_attention(captured["qkv"], block.n_heads)  # [B, heads, S]
    _, _, v = rearrange(captured["qkv"], "b s (three h d) -> three b h s d", three=3, h=block.n_heads)
    expected = rearrange(torch.einsum("bhs,bhsd->bhd", weights, v), "b h d -> b (h d)")
    torch.testing.assert_close(captured["attended"][:, -1], expected, atol=1e-5, rtol=1e-4)


def test_cli_writes_a_record_and_refuses_another_head(trained, tmp_path):
    store, ckpt, tmp = trained
    pad_probe.main(["--checkpoint", str(tmp / "pad"), "--store", str(store), "--windows", "8", "--batch-size", "4",
                    "--out-dir", str(tmp_path)])
    (record_path,) = tmp_path.glob("pad_probe_pad_step*.json")
    record = json.loads(record_path.read_text())
    assert record["kind"] == "pad_probe" and record["metrics"]["overall"]["windows"] == 8
    assert record["budget"]["train_steps"] == 600
    # the results page's row: the three action errors in the record's order
    (row,) = [line for line in tables([record]).splitlines() if line.startswith("| metaworld_mt | future frames")]
    mse = record["metrics"]["overall"]["action_mse"]
    assert f"{mse['own']:.3f} / {mse['real_future']:.3f} / {mse['wrong_future']:.3f}" in row
    assert f"(even {16 / 34:.2f})" in row  # the future tokens' share of the sequence beside the attention on them
    with pytest.raises(ValueError, match="pad-probe reads PAD checkpoints"):
        pad_probe.probe(tmp / "vae", str(store))  # a run folder: its latest checkpoint
    with pytest.raises(SystemExit):
        pad_probe.main(["--checkpoint", str(ckpt), "--windows", "1"])
