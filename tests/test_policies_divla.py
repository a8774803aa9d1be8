"""Diffusion-VLA: FiLM injection acts exactly through the reasoning, greedy generation reproduces memorised
annotations, and vmp-train builds the tokenizer from a store's annotations into a self-contained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.data import EpisodeStore, KeySpec, Normalizer
from vmp.policies.encoders import ObsEncoder
from vmp.policies.heads.divla import DiVLAConfig, DiVLAPolicy
from vmp.policies.nn.reasoning import TextTokenizer, train_tokenizer

PHASES = ["reach the object", "grasp the object", "move toward the goal"]
SHAPE_META = {"obs": {"state": {"shape": [4], "type": "low_dim"}}, "action": {"shape": [2]}}


def make_policy(inject: bool = True, **kw) -> DiVLAPolicy:
    torch.manual_seed(0)
    config = DiVLAConfig(n_obs_steps=1, horizon=4, n_action_steps=2, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                         backbone_layers=2, backbone_heads=2, inject_reasoning=inject, n_steps=4,
                         tokenizer=train_tokenizer(PHASES * 3, vocab_size=64), **kw)
    encoder = ObsEncoder(SHAPE_META, 1, d_model=32, backbone="compact_cnn")
    normalizer = Normalizer.empty({"state": (4,), "action": (2,)}, {"state": "meanstd", "action": "minmax"})
    normalizer.set_stats("action", min=-np.ones(2), max=np.ones(2), mean=np.zeros(2), std=np.ones(2))
    return DiVLAPolicy(config, encoder, normalizer, action_dim=2).eval()


def test_tokenizer_round_trips_annotations():
    tok = TextTokenizer(train_tokenizer(PHASES, vocab_size=64), max_len=8)
    ids = tok.encode(PHASES)
    assert ids.shape == (3, 10) and (ids[:, 0] == tok.bos_id).all()
    assert tok.decode(ids[:, 1:]) == PHASES


def test_film_injection_changes_actions_only_through_the_reasoning():
    policy = make_policy()
    for film in policy.denoiser.films:  # a trained FiLM: away from its identity initialisation
        torch.nn.init.normal_(film.proj.weight, std=0.5)
    obs = {"state": torch.randn(1, 1, 4)}
    tok = policy.tokenizer

    def chunk(text: str, p=policy) -> torch.Tensor:
        p._reasoning, p._context_step = (tok.encode([text])[:, 1:], [text]), 0  # as the control loop caches it
        return p.predict(obs, generator=torch.Generator().manual_seed(3)).actions

    grasp, move = chunk("grasp the object"), chunk("move toward the goal")
    assert not torch.allclose(grasp, move, atol=1e-4)  # other reasoning, other actions
    assert torch.equal(grasp, chunk("grasp the object"))  # same reasoning and noise, same actions
    ablated = make_policy(inject=False)
    assert torch.equal(chunk("grasp the object", ablated), chunk("move toward the goal", ablated))


def test_action_context_encoder_reads_the_observation_without_the_reasoning_model():
    """action_context=encoder: given the reasoning, the actions do not depend on the reasoning model's weights (they
    do with the default, where the denoiser attends to its hidden states); a training step still trains both."""
    obs = {"state": torch.randn(1, 1, 4)}
    text = "grasp the object"

    def chunk(p: DiVLAPolicy) -> torch.Tensor:
        p._reasoning, p._context_step = (p.tokenizer.encode([text])[:, 1:], [text]), 0
        return p.predict(obs, generator=torch.Generator().manual_seed(3)).actions

    for context, follows_backbone in (("backbone", True), ("encoder", False)):
        policy = make_policy(action_context=context)
        before = chunk(policy)
        with torch.no_grad():
            for param in policy.backbone.parameters():
                param.add_(torch.randn_like(param) * 0.5)
        assert torch.allclose(before, chunk(policy), atol=1e-6) != follows_backbone, context

    policy = make_policy(action_context="encoder").train()
    batch = {"obs": {"state": torch.randn(3, 1, 4)}, "action": torch.rand(3, 4, 2) * 2 - 1,
             "action_is_pad": torch.zeros(3, 4, dtype=torch.bool), "text": {"phase": PHASES}}
    policy.compute_loss(batch)["loss"].backward()
    assert policy.backbone.lm_head.weight.grad.abs().sum() > 0 and policy.denoiser.action_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="action_context must be backbone or encoder"):
        DiVLAConfig(action_context="hidden")


def test_real_time_chunking_prefix_is_kept_where_its_weight_is_one():
    policy = make_policy()
    window = {"state": np.zeros((1, 4), np.float32)}
    prefix = np.array([[0.5, -0.25]], np.float32)
    pred = policy.predict_window(window, prefix=prefix, prefix_weights=np.ones(1, np.float32),
                                 generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pred.actions[:1], prefix, atol=1e-5)
    assert isinstance(pred.extras["reasoning"], str)
    free = policy.predict_window(window, generator=torch.Generator().manual_seed(0))
    assert not np.allclose(free.actions[:1], prefix, atol=1e-2)


def test_greedy_generation_reproduces_memorised_annotations():
    policy = make_policy().train()
    states = torch.randn(3, 1, 4) * 2
    batch = {"obs": {"state": states}, "action": torch.rand(3, 4, 2) * 2 - 1,
             "action_is_pad": torch.zeros(3, 4, dtype=torch.bool), "text": {"phase": PHASES}}
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):
        losses = policy.compute_loss(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["reasoning_loss"] < 0.05
    policy.eval()
    assert policy.reason({"state": states}) == PHASES


def phased_store(tmp_path) -> EpisodeStore:
    """A six-episode store with phase annotations, and a task config that reads it (see `phased_cfg`)."""
    store = EpisodeStore.create(tmp_path / "s.zarr", {"state": KeySpec((4,), "float32"), "action": KeySpec((2,), "float32"),
                                                      "phase": KeySpec((), "int16")},
                                {"task": "t", "control_hz": 10, "phase_names": PHASES})
    rng = np.random.default_rng(0)
    for _ in range(6):
        phase = np.repeat(np.arange(3, dtype=np.int16), 8)
        store.append_episode({"state": rng.normal(size=(24, 4)), "action": rng.uniform(-1, 1, (24, 2)), "phase": phase},
                             text={"reasoning": ", ".join(PHASES), "language": "push the block"})
    (tmp_path / "cfg" / "task").mkdir(parents=True)
    (tmp_path / "cfg" / "task" / "phased.yaml").write_text(yaml.safe_dump(
        {"name": "phased", "store": str(tmp_path / "s.zarr"), "obs_type": "lowdim", "control_hz": 10,
         "goal_keys": [], "shape_meta": SHAPE_META}))
    return store


def phased_cfg(tmp_path, *overrides: str):
    """A tiny vmp-train config of the divla head on `phased_store`'s store, run in tmp_path / run."""
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", [f"hydra.searchpath=[file://{tmp_path / 'cfg'}]", "task=phased", "policy=divla",
                                "encoder=lowdim", "policy.d_model=32", "policy.n_layers=1", "policy.backbone_layers=1",
                                "policy.n_heads=2", "policy.backbone_heads=2", "policy.horizon=4", "policy.n_obs_steps=1",
                                "policy.n_action_steps=2", "policy.vocab_size=64", "training.steps=4",
                                "training.batch_size=8", f"run_dir={tmp_path / 'run'}", *overrides])
    return cfg


def test_train_builds_the_tokenizer_from_the_store_and_the_checkpoint_stands_alone(tmp_path):
    from vmp.policies.checkpoint import load_policy
    from vmp.policies.train import train

    store = phased_store(tmp_path)
    train(phased_cfg(tmp_path))
    store.close()
    (tmp_path / "s.zarr").rename(tmp_path / "gone.zarr")  # the checkpoint needs neither the store nor its texts
    policy, loaded = load_policy(tmp_path / "run")
    assert '"goal":' in loaded.policy.tokenizer and policy.context_every == 8  # the subwords of its annotations
    pred = policy.predict_window({"state": np.zeros((1, 4), np.float32)}, step=0)
    assert pred.actions.shape == (4, 2) and isinstance(pred.extras["reasoning"], str)


def test_resume_keeps_the_tokenizer_the_run_started_with(tmp_path, monkeypatch):
    """Training a WordPiece tokenizer twice on the same annotations need not give the same ids, so a resumed run must
    not relearn it: its reasoning model's weights were trained against the first one's ids."""
    from vmp.policies.checkpoint import read_checkpoint
    from vmp.policies.heads import divla
    from vmp.policies.train import train

    store = phased_store(tmp_path)
    first = read_checkpoint(train(phased_cfg(tmp_path, "training.stop_after=2", "training.ckpt_every=2")))
    tokenizer = OmegaConf.create(first["cfg"]).policy.tokenizer
    assert first["step"] == 2
    # what a second training may give: the same subwords under other ids
    assert train_tokenizer(divla.annotation_corpus(store)[::-1], 64) != tokenizer

    def relearn(texts, vocab_size):
        raise AssertionError("a resumed run learned its tokenizer again")

    monkeypatch.setattr(divla, "train_tokenizer", relearn)
    resumed = read_checkpoint(train(phased_cfg(tmp_path, "resume=true")))
    assert resumed["step"] == 4 and OmegaConf.create(resumed["cfg"]).policy.tokenizer == tokenizer


def test_store_without_phases_is_refused_by_name(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", {"state": KeySpec((4,), "float32"), "action": KeySpec((2,), "float32")},
                                {"task": "t", "control_hz": 10})
    with pytest.raises(ValueError, match="no 'phase' key"):
        DiVLAPolicy.prepare_settings(DiVLAConfig(), None, store)


def test_evaluation_scores_reasoning_against_the_experts_phase():
    """vmp-eval steps the task's expert beside a reasoning policy (its actions unused) and scores each chunk's
    reasoning against the expert's phase for the same state."""
    from vmp.policies.base import Capabilities
    from vmp.sim import load_task_cfg, make
    from vmp.sim.evaluate import rollout_policy
    from vmp.sim.experts.base import ActorDefaults
    from vmp.sim.experts import make_expert

    task = load_task_cfg("metaworld_mt_lowdim")
    env = make(task, max_episode_steps=40)
    annotator = make_expert(task.expert, env=env)

    class Talker(ActorDefaults):
        capabilities = Capabilities(extras=("reasoning",))

        def __init__(self, say):
            self.say, self.last_extras, self.t = say, {}, 0

        def reset(self):
            self.t = 0

        def set_goal(self, goal):
            pass

        def set_language(self, text):
            pass

        def select_action(self, obs):
            if self.t % 4 == 0:  # a new chunk every 4 steps, with its reasoning
                self.last_extras = {"reasoning": self.say()}
            self.t += 1
            return np.zeros(4, np.float32)

    oracle = rollout_policy(env, Talker(lambda: annotator.phase_names[annotator.phase]), 100000, annotator=annotator)
    wrong = rollout_policy(env, Talker(lambda: "fly to the moon"), 100000, annotator=annotator)
    assert oracle["metrics"]["reasoning_accuracy"] == 1.0 and wrong["metrics"]["reasoning_accuracy"] == 0.0
    env.close()


def test_the_action_head_can_be_given_a_fixed_text_or_the_experts_phase_instead_of_its_own_reasoning():
    """reasoning_source=text injects that text (a wrong one tests whether the head follows its reasoning);
    reasoning_source=expert injects the phase vmp-eval's expert gives each state, and refuses to run untold."""
    from vmp.sim import load_task_cfg, make
    from vmp.sim.evaluate import TakesReasoning, rollout_policy
    from vmp.sim.experts import make_expert

    fixed = make_policy(reasoning_source="text", reasoning_text="grasp the object")
    for film in fixed.denoiser.films:
        torch.nn.init.normal_(film.proj.weight, std=0.5)
    obs = {"state": torch.randn(1, 1, 4)}
    pred = fixed.predict(obs, generator=torch.Generator().manual_seed(3))
    assert pred.extras["reasoning"] == ["grasp the object"]
    fixed.config.reasoning_text = "move toward the goal"
    assert not torch.allclose(pred.actions, fixed.predict(obs, generator=torch.Generator().manual_seed(3)).actions)
    with pytest.raises(ValueError, match="reasoning_text is the text injected with reasoning_source=text"):
        DiVLAConfig(reasoning_source="text")
    with pytest.raises(ValueError, match="reasoning_source must be generated, expert or text"):
        DiVLAConfig(reasoning_source="oracle")

    told = make_policy(reasoning_source="expert")
    assert isinstance(told, TakesReasoning)
    with pytest.raises(RuntimeError, match="needs the task's expert phase each step"):
        told.predict(obs)
    # in an evaluation the runner tells the head the expert's phase for each state: every chunk carries it
    task = load_task_cfg("metaworld_mt_lowdim")
    env = make(task, max_episode_steps=24)
    annotator = make_expert(task.expert, env=env)
    meta = {"obs": {"state": {"shape": [39], "type": "low_dim"}}, "action": {"shape": [4]}}
    config = DiVLAConfig(n_obs_steps=1, horizon=4, n_action_steps=2, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                         backbone_layers=2, backbone_heads=2, n_steps=2, reasoning_source="expert",
                         tokenizer=train_tokenizer(list(annotator.phase_names) * 3, vocab_size=64))
    normalizer = Normalizer.empty({"state": (39,), "action": (4,)}, {"state": "meanstd", "action": "minmax"})
    normalizer.set_stats("action", min=-np.ones(4), max=np.ones(4), mean=np.zeros(4), std=np.ones(4))
    normalizer.set_stats("state", min=-np.ones(39), max=np.ones(39), mean=np.zeros(39), std=np.ones(39))
    policy = DiVLAPolicy(config, ObsEncoder(meta, 1, d_model=32, backbone="compact_cnn"), normalizer, 4).eval()
    out = rollout_policy(env, policy, 100000, annotator=annotator)
    env.close()
    assert out["length"] == 24 and out["metrics"]["reasoning_accuracy"] == 1.0
    assert {t["text"] for t in out["text"]} <= set(annotator.phase_names)


TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64, "vocab_size": 50}


def test_hugging_face_backbone_runs_forward_and_generate_and_rebuilds_from_its_checkpoint_config(tmp_path):
    pytest.importorskip("transformers")
    from vmp.policies.nn.reasoning import HFBackbone

    policy = make_policy(backbone="hf", backbone_config=dict(TINY_LLAMA))
    assert isinstance(policy.backbone, HFBackbone)
    batch = {"obs": {"state": torch.randn(3, 1, 4)}, "action": torch.rand(3, 4, 2) * 2 - 1,
             "action_is_pad": torch.zeros(3, 4, dtype=torch.bool), "text": {"phase": PHASES}}
    losses = policy.train().compute_loss(batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and policy.backbone.proj_in.weight.grad.abs().sum() > 0
    policy.eval()
    texts = policy.reason({"state": torch.randn(2, 1, 4)})  # greedy decoding through the model's KV cache
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    pred = policy.predict({"state": torch.randn(2, 1, 4)})
    assert pred.actions.shape == (2, 4, 2) and len(pred.extras["reasoning"]) == 2
    arch = policy.checkpoint_settings()["backbone_config"]
    assert arch["model_type"] == "llama" and arch["vocab_size"] == policy.tokenizer.vocab_size
    rebuilt = make_policy(backbone="hf", backbone_config=arch)  # what a checkpoint does, without any directory
    rebuilt.load_state_dict(policy.state_dict())
    policy.backbone.lm.save_pretrained(tmp_path / "lm")  # a model directory on disk, as a user would have one
    from_dir = make_policy(backbone="hf", backbone_path=str(tmp_path / "lm"))
    assert torch.equal(from_dir.backbone.lm.get_input_embeddings().weight, policy.backbone.lm.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="exactly one of"):
        make_policy(backbone="hf")
