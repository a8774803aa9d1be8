"""The Policy interface every caller shares: one window-to-chunk path (select_action, the deployment engine, the
daemon, vmp-eval), extras, per-episode reset, a slow context, training-only keys and action-free samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.data import EpisodeStore, KeySpec, Normalizer, SequenceDataset, SequenceSampler
from vmp.policies.base import BatchSpec, Capabilities, Prediction, SharedEncoderPolicy
from vmp.policies.build import build_policy
from vmp.policies.checkpoint import save_checkpoint
from vmp.real.engine import InferenceEngine
from vmp.real.testing import ReachPolicy
from vmp.sim.evaluate import rollout_policy

IMG = 16


def image_cfg(head: str = "beso", **policy: Any):
    fields = {"name": head, "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "d_model": 32, "n_layers": 1,
              "n_heads": 2, "dropout": 0.0, "n_steps": 3}
    fields.update(policy)
    obs = {"camera_image": {"shape": [IMG, IMG, 3], "type": "rgb"}, "pos": {"shape": [2], "type": "low_dim"},
           "target": {"shape": [2], "type": "low_dim"}}
    return OmegaConf.create({
        "task": {"name": "toy_image", "goal_keys": [], "max_episode_steps": 30, "obs_type": "image",
                 "shape_meta": {"obs": obs, "action": {"shape": [2]}}},
        "policy": fields,
        "encoder": {"backbone": "compact_cnn", "backbone_kwargs": {}, "n_keypoints": 4, "crop_ratio": 1.0,
                    "lowdim_hidden": 32},
    })


def unit_normalizer(keys=("pos", "target"), action_dim=2):
    norm = Normalizer.empty({"action": (action_dim,), **{k: (2,) for k in keys}},
                            {"action": "minmax", **{k: "meanstd" for k in keys}})
    for key in norm.keys:
        d = norm.shapes[key][0]
        norm.set_stats(key, min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d))
    return norm


def image_window(seed: int = 0, n_obs_steps: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"camera_image": rng.integers(0, 256, (n_obs_steps, IMG, IMG, 3), dtype=np.uint8),
            "pos": rng.uniform(-1, 1, (n_obs_steps, 2)).astype(np.float32),
            "target": rng.uniform(-1, 1, (n_obs_steps, 2)).astype(np.float32)}


@pytest.mark.parametrize("head", ["beso", "ddpm"])
def test_image_window_gives_the_training_layout_chunk_on_every_path(head):
    """HWC camera frames as a robot gives them reach the head as the CHW batches it trained on, through
    predict_window, the engine and select_action alike (same noise -> the same chunk)."""
    torch.manual_seed(0)
    extra = {"n_steps": 3} if head == "beso" else {"n_steps": 5, "num_train_timesteps": 5, "sampler": "ddim"}
    policy = build_policy(image_cfg(head, **extra), unit_normalizer()).eval()
    window = image_window()
    batch = {"camera_image": torch.from_numpy(window["camera_image"]).permute(0, 3, 1, 2)[None],
             "pos": torch.from_numpy(window["pos"])[None], "target": torch.from_numpy(window["target"])[None]}
    with torch.no_grad():
        trained_layout = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(3))[0].numpy()
    via_window = policy.predict_window(window, generator=torch.Generator().manual_seed(3)).actions
    np.testing.assert_allclose(via_window, trained_layout, rtol=1e-5, atol=1e-6)
    engine = InferenceEngine(policy, seed=3)
    np.testing.assert_allclose(engine.infer(window).actions, trained_layout, rtol=1e-5, atol=1e-6)
    # select_action: the same path from single env observations (global RNG for the noise)
    policy.reset()
    torch.manual_seed(5)
    first = policy.select_action({k: v[0] for k, v in window.items()})
    torch.manual_seed(5)
    expected = policy.predict_window({k: np.stack([v[0], v[0]]) for k, v in window.items()}).actions
    np.testing.assert_allclose(first, expected[policy.n_obs_steps - 1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"'camera_image': expected shape \(2, 16, 16, 3\)"):
        policy.predict_window({**window, "camera_image": window["camera_image"].transpose(0, 3, 1, 2)})


# A watchdog that never fires in these tests: they check the deployment path, not the watchdog (test_real_loop's).
PATIENT_WATCHDOG = ["robot.safety.watchdog_s=60"]


def test_tiny_image_checkpoint_deploys_through_the_daemon(tmp_path):
    """An image policy's checkpoint runs under vmp-deploy (robot=toy with a camera): before the shared path, the
    engine fed HWC frames to the CNN and the first chunk crashed."""
    from vmp.real import daemon

    cfg = image_cfg()
    torch.manual_seed(0)
    policy = build_policy(cfg, unit_normalizer())
    ckpt = tmp_path / "image.pt"
    save_checkpoint(ckpt, {"cfg": OmegaConf.to_yaml(cfg), "policy": policy.state_dict(), "ema": None, "step": 0})
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        dcfg = compose("deploy", [f"checkpoint={ckpt}", "robot=toy", f"robot.env.kwargs.image_size={IMG}",
                                  "metrics.enabled=false", f"record.path={tmp_path / 'rec.zarr'}", "n_episodes=2",
                                  "max_ticks=20", f"summary_path={tmp_path / 'summary.json'}",
                                  *PATIENT_WATCHDOG])
    summary = daemon.run(dcfg, tmp_path)
    # Only what the loop guarantees under any load: a busy machine may start a tick late, and the loop then skips
    # the ticks it missed (the count jumps past max_ticks); the watchdog is made patient so a slow chunk holds.
    assert summary["error"] is None and summary["n_episodes"] == 2
    assert all(e["ticks"] >= 20 and e["reason"] == "max_ticks" for e in summary["episodes"])
    assert summary["counters"]["chunks"] >= 2  # each episode ran on the image policy's chunks
    missed = summary["counters"].get("missed_ticks", 0)
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:
        assert store.n_episodes == 2 and store.episode(0)["camera_image"].shape[1:] == (IMG, IMG, 3)
        recorded = sum(len(store.episode(i)["camera_image"]) for i in range(2))
        assert recorded == sum(e["ticks"] for e in summary["episodes"]) - missed  # every executed tick recorded
    # a checkpoint whose task states no max_episode_steps runs to the robot config's max_ticks
    del cfg.task.max_episode_steps
    save_checkpoint(ckpt, {"cfg": OmegaConf.to_yaml(cfg), "policy": policy.state_dict(), "ema": None, "step": 0})
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        dcfg = compose("deploy", [f"checkpoint={ckpt}", "robot=toy", f"robot.env.kwargs.image_size={IMG}",
                                  "metrics.enabled=false", "record.enabled=false", "n_episodes=1",
                                  "robot.max_ticks=12", f"summary_path={tmp_path / 'summary2.json'}",
                                  *PATIENT_WATCHDOG])
    summary = daemon.run(dcfg, tmp_path)
    episode = summary["episodes"][0]
    assert summary["error"] is None and episode["reason"] == "max_ticks" and 12 <= episode["ticks"] < 200  # not the toy env's 200


class ExtrasReachPolicy(ReachPolicy):
    """ReachPolicy that returns candidates with scores and reasoning text, renewed by a slow context."""

    name = "synthetic_reach_extras"
    capabilities = Capabilities(prefix=True, extras=("candidates", "candidate_scores", "reasoning"), context=True)

    def __init__(self, context_every: int = 5, **kwargs: Any):
        super().__init__(**kwargs)
        self.context_every = context_every
        self.refreshed_at: list[int] = []
        self.resets = 0

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    def refresh_context(self, obs, goal) -> None:
        self.refreshed_at.append(self._step)

    def predict(self, obs, goal=None, generator=None, **kwargs) -> Prediction:
        chunk = self.predict_action_chunk(obs, goal, generator, **kwargs)
        cands = torch.stack([chunk, -chunk, 0 * chunk], dim=1)  # [B, 3, H, A]
        scores = torch.tensor([[1.0, 0.2, -1.0]]).expand(chunk.shape[0], -1)
        return Prediction(chunk, {"candidates": cands, "candidate_scores": scores,
                                  "reasoning": [f"plan {len(self.refreshed_at)}"] * chunk.shape[0]})


def test_extras_reach_eval_and_the_context_refreshes_at_its_own_rate(tmp_path):
    from vmp.real.toy import ToyReachEnv

    env = ToyReachEnv(image_size=IMG, max_episode_steps=20)
    policy = ExtrasReachPolicy(context_every=10, n_obs_steps=1, horizon=8, n_action_steps=4)
    out = rollout_policy(env, policy, seed=0, record_video=True)
    assert out["length"] == 20
    # a chunk every 4 steps (0, 4, ..., 16); the context is renewed when >= 10 steps old: at 0, 12
    assert policy.refreshed_at == [0, 12]
    assert [t["text"] for t in out["text"]] == ["plan 1", "plan 2"] and [t["step"] for t in out["text"]] == [0, 12]
    frames = out["frames"]
    assert len({f.shape for f in frames}) == 1 and frames[0].shape[0] > IMG  # one size, with the extras panel under it
    assert frames[-1][IMG:].max() > 24  # something was drawn (the panel's background is 24)
    assert policy.last_extras["candidates"].shape == (3, 8, 2) and policy.last_extras["reasoning"] == "plan 2"


def test_reset_once_per_episode_in_eval_and_in_the_control_loop(tmp_path):
    from vmp.real.loop import ControlLoop, LoopConfig
    from vmp.real.recorder import EpisodeRecorder
    from vmp.real.safety import SafetyLayer
    from vmp.real.sim_robot import SimRobot
    from vmp.real.toy import ToyReachEnv

    env = ToyReachEnv(max_episode_steps=12)
    policy = ExtrasReachPolicy(context_every=100, n_obs_steps=1, horizon=8, n_action_steps=4)
    for seed in range(3):
        rollout_policy(env, policy, seed=seed)
    assert policy.resets == 3 and policy.refreshed_at == [0, 0, 0]  # each episode starts a fresh context

    policy = ExtrasReachPolicy(context_every=100, n_obs_steps=1, horizon=8, n_action_steps=4)
    toy = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"tol": 0.0, "max_episode_steps": 100}, "control_hz": 50}
    with SimRobot(toy) as robot:
        spec = robot.spec
        recorder = EpisodeRecorder(tmp_path / "rec.zarr", spec, {"task": "toy", "control_hz": 50})
        engine = InferenceEngine(policy)
        loop = ControlLoop(robot, engine, SafetyLayer([-1] * 2, [1] * 2, 0.5, 1.0, "zero"),
                           LoopConfig(control_hz=50, exec_horizon=4, blend="none", max_ticks=12, stop_on_success=False),
                           recorder=recorder)
        try:
            for seed in range(2):
                loop.run_episode(seed)
        finally:
            loop.close()
            recorder.close()
    assert policy.resets == 2
    # a person reads the current reasoning off the metrics endpoint
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(loop.metrics.prometheus())}
    assert [(s.labels, s.value) for s in families["vmp_deploy_reasoning_info"].samples] == [({"text": "plan 2"}, 1.0)]
    assert loop.metrics.summary()["infos"]["reasoning"] == {"text": "plan 2"}
    with EpisodeStore.open(tmp_path / "rec.zarr") as store:  # the daemon records the reasoning it was given
        assert store.episode_text(1)["reasoning"] == [{"tick": 0, "text": "plan 2"}]


# ---- training-only keys and action-free samples ----
def probe_store(path, action_free_episode: int | None = None):
    schema = {"pos": KeySpec((2,), "float32"), "critic": KeySpec((1,), "float32"), "action": KeySpec((2,), "float32")}
    store = EpisodeStore.create(path, schema, {"task": "toy", "control_hz": 50})
    rng = np.random.default_rng(0)
    for e in range(6):
        n = 12
        ep = {"pos": rng.normal(size=(n, 2)).astype(np.float32), "critic": np.full((n, 1), float(e), np.float32),
              "action": rng.normal(size=(n, 2)).astype(np.float32)}
        if e == action_free_episode:
            del ep["action"]
        store.append_episode(ep, action_free=e == action_free_episode)
    store.close()
    return path


class ProbeHead(SharedEncoderPolicy):
    """A head whose loss reads a training-only target; records what it is given at run time."""

    name = "probe"
    config_class = None  # set below: a plain DiffusionHeadConfig
    seen_train: list[float] = []
    seen_obs_keys: list[set] = []
    seen_sources: list[int] = []

    def __init__(self, config, encoder, normalizer, action_dim):
        super().__init__(config, encoder, normalizer, action_dim)
        self.out = torch.nn.Linear(encoder.d_model, action_dim)

    @classmethod
    def batch_spec(cls, config, task):
        return BatchSpec(train_keys=("critic",))

    def compute_loss(self, batch):
        critic = batch["train"]["critic"]  # [B, horizon, 1]
        ProbeHead.seen_train.append(float(critic.float().mean()))
        if "source" in batch:
            ProbeHead.seen_sources.extend(batch["source"].tolist())
        actions, cond = self.training_inputs(batch)
        pred = self.out(cond.mean(1))[:, None].expand_as(actions)
        return {"loss": self.masked_mse(pred, actions + critic, batch["action_is_pad"])}

    def predict_action_chunk(self, obs, goal=None, generator=None):
        ProbeHead.seen_obs_keys.append(set(obs))
        cond = self.condition(obs, goal)
        return self.out(cond.mean(1))[:, None].expand(-1, self.horizon, -1)


def test_training_only_key_reaches_the_loss_and_never_the_policy(tmp_path, monkeypatch):
    from vmp.policies.base import DiffusionHeadConfig
    from vmp.policies.heads import HEADS
    from vmp.policies.train import train

    monkeypatch.setattr(ProbeHead, "config_class", DiffusionHeadConfig)
    monkeypatch.setitem(HEADS, "probe", ProbeHead)
    store = probe_store(tmp_path / "probe.zarr")
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", ["task=lift", "policy=beso", f"store={store}", f"run_dir={tmp_path / 'run'}",
                                "training.steps=3", "training.batch_size=8", "training.val_ratio=0", "device=cpu"])
    cfg.policy = OmegaConf.create({"name": "probe", "n_obs_steps": 1, "horizon": 4, "n_action_steps": 2, "d_model": 16})
    cfg.task.shape_meta = OmegaConf.create({"obs": {"pos": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [2]}})
    cfg.task.goal_keys = []
    cfg.encoder = OmegaConf.create({"lowdim_hidden": 16})
    ProbeHead.seen_train.clear()
    train(cfg)
    assert len(ProbeHead.seen_train) == 3 and max(ProbeHead.seen_train) > 0  # episodes 1..5 carry critic > 0
    policy = ProbeHead(DiffusionHeadConfig(n_obs_steps=1, horizon=4, n_action_steps=2, d_model=16),
                       build_policy_encoder(cfg), unit_normalizer(keys=("pos",)), 2)
    ProbeHead.seen_obs_keys.clear()
    policy.predict_window({"pos": np.zeros((1, 2), np.float32), "critic": np.ones((1, 1), np.float32)})
    assert ProbeHead.seen_obs_keys == [{"pos"}]

    # a second store with action-free episodes joins the run through `mix`, weighted 3:1 against the main one
    video = probe_store(tmp_path / "video.zarr", action_free_episode=1)
    cfg.mix = OmegaConf.create([{"store": str(video), "weight": 3.0}])
    cfg.run_dir = str(tmp_path / "mixed")
    cfg.training.steps, cfg.training.batch_size = 4, 16
    ProbeHead.seen_sources.clear()
    train(cfg)
    sources = np.array(ProbeHead.seen_sources)
    assert sources.size == 64 and 0.6 < (sources == 1).mean() < 0.9
    cfg.mix, cfg.run_dir = OmegaConf.create([{"store": str(video)}]), str(tmp_path / "bad_mix")
    with pytest.raises(ValueError, match=r"mix\[0\] must give `store` and `weight`"):
        train(cfg)


def build_policy_encoder(cfg):
    from vmp.policies.encoders import ObsEncoder

    return ObsEncoder(OmegaConf.to_container(cfg.task.shape_meta), 1, d_model=16, lowdim_hidden=16)


@pytest.mark.parametrize("head", ["beso", "ddpm", "carp"])
def test_action_free_samples_add_exactly_zero_action_gradient(tmp_path, head):
    store = probe_store(tmp_path / "video.zarr", action_free_episode=2)
    sampler = SequenceSampler(store, keys=["pos"], n_obs_steps=1, horizon=8, n_action_steps=4, split="all")
    data = SequenceDataset(sampler)
    free = [i for i in range(len(sampler)) if sampler.window(i)[0] == 2]
    acted = [i for i in range(len(sampler)) if sampler.window(i)[0] != 2][: len(free)]
    collate = torch.utils.data.default_collate
    cfg = OmegaConf.create({
        "task": {"name": "toy", "goal_keys": [], "shape_meta": {"obs": {"pos": {"shape": [2], "type": "low_dim"}},
                                                                "action": {"shape": [2]}}},
        "policy": {"name": head, "n_obs_steps": 1, "horizon": 8, "n_action_steps": 4, "d_model": 16,
                   **({"n_layers": 1, "n_heads": 2} if head != "carp" else
                      {"width": 16, "depth": 1, "n_heads": 2, "tokenizer_checkpoint": None,
                       "tokenizer": {"horizon": 8, "scales": [1, 2], "codebook_size": 16, "code_dim": 2,
                                     "hidden_dim": 4}})},
        "encoder": {"lowdim_hidden": 16},
    })
    torch.manual_seed(0)
    policy = build_policy(cfg, unit_normalizer(keys=("pos",))).train()
    batch = collate(data.__getitems__(free))
    assert not batch["has_action"].any() and batch["action_is_pad"].all()
    policy.zero_grad()
    policy.compute_loss(batch)["loss"].backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    policy.zero_grad()
    policy.compute_loss(collate(data.__getitems__(acted)))["loss"].backward()
    assert any(torch.count_nonzero(p.grad) > 0 for p in policy.parameters() if p.grad is not None)
