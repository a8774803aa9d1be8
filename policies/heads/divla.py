"""Diffusion-VLA (Wen et al. 2024): an autoregressive reasoning model whose output is injected into a diffusion
action head.

The shared observation encoder turns the images, proprioception and instruction into a token prefix; the `Backbone`
(a small prefix-LM transformer trained from scratch) maps it to hidden states and writes the reasoning, here the
expert's phase annotation at the newest observation ("grasp the object"), with a subword tokenizer trained on the
store's annotations. The reasoning is embedded and injected into every layer of the action head's transformer
denoiser through FiLM; the denoiser also attends to the backbone's hidden states (``action_context=encoder``: to the
encoder's tokens instead, so the observation reaches the actions without the reasoning model). One loss trains both:
``reasoning_weight`` x next-token cross-entropy + ``action_weight`` x the DDPM loss on the chunk.

At run time the reasoning is regenerated every ``reasoning_every`` control steps and cached in between (the policy's
slow context), and returned with every chunk (`Prediction.extras["reasoning"]`), so `vmp-eval` captions its videos
with it and `vmp-deploy` logs it. ``inject_reasoning=false`` is the ablation: no FiLM, the same backbone and losses.
``reasoning_source`` (inference-time) gives the action head other reasoning than its own: the task expert's phase
(vmp-eval tells it every step) or a fixed text, to measure what injection can add and whether the head follows it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from vmp.data.schema import LANGUAGE_KEY, PHASE_KEY
from vmp.policies.base import BatchSpec, Capabilities, DiffusionHeadConfig, Prediction, SharedEncoderPolicy
from vmp.policies.nn import DiscreteTimeDiffusion, TransformerDenoiser
from vmp.policies.nn.reasoning import HFBackbone, ReasoningEmbedding, ScratchBackbone, TextTokenizer, train_tokenizer


@dataclasses.dataclass
class DiVLAConfig(DiffusionHeadConfig):
    backbone: str = "scratch"       # scratch | hf (a Hugging Face decoder LM: pip install 'vmp[vla]')
    backbone_path: str | None = None    # hf: a model directory on disk (never downloaded)
    backbone_config: dict | None = None  # hf: a config dict instead (random init; what a checkpoint records)
    backbone_layers: int = 4        # scratch
    backbone_heads: int = 4
    inject_reasoning: bool = True   # false: the ablation without FiLM injection
    # what the denoiser attends to: the reasoning model's hidden states of the observation (the paper's design), or
    # the shared encoder's tokens directly (the reasoning then reaches the actions only through FiLM)
    action_context: str = "backbone"  # backbone | encoder
    reasoning_weight: float = 1.0
    action_weight: float = 1.0
    max_reasoning_tokens: int = 12  # reasoning text is cut to this many subword tokens
    vocab_size: int = 256           # of the tokenizer trained on the store's annotations
    tokenizer: str | None = None    # its JSON: filled in by training (prepare_settings), kept in the checkpoint
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    # inference-time settings
    sampler: str = "ddim"           # ddpm | ddim
    n_steps: int = 10
    reasoning_every: int = 8        # control steps between reasoning refreshes (0: at every chunk)
    # what the action head is given: its own generated reasoning; the task expert's phase for the current state,
    # told each step by vmp-eval (the upper bound of injection); or a fixed `reasoning_text` (a wrong one tests
    # whether the action head follows its reasoning at all)
    reasoning_source: str = "generated"  # generated | expert | text
    reasoning_text: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"policy.sampler must be ddpm or ddim, got {self.sampler!r}")
        if not 1 <= self.n_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.n_steps must be in [1, {self.num_train_timesteps}], got {self.n_steps}")
        if self.reasoning_every < 0:
            raise ValueError(f"policy.reasoning_every must be >= 0, got {self.reasoning_every}")
        if self.action_context not in ("backbone", "encoder"):
            raise ValueError(f"policy.action_context must be backbone or encoder, got {self.action_context!r}")
        if self.backbone not in ("scratch", "hf"):
            raise ValueError(f"policy.backbone must be scratch or hf, got {self.backbone!r}")
        if self.max_reasoning_tokens < 1:
            raise ValueError(f"policy.max_reasoning_tokens must be >= 1, got {self.max_reasoning_tokens}")
        if self.reasoning_source not in ("generated", "expert", "text"):
            raise ValueError(f"policy.reasoning_source must be generated, expert or text, got {self.reasoning_source!r}")
        if (self.reasoning_source == "text") != (self.reasoning_text is not None):
            raise ValueError("policy.reasoning_text is the text injected with reasoning_source=text, and only then; "
                             f"got reasoning_source={self.reasoning_source!r}, reasoning_text={self.reasoning_text!r}")


def annotation_corpus(store: Any) -> list[str]:
    """What the tokenizer learns its subwords from: the phase names and every episode's reasoning and instruction."""
    texts = list(store.phase_names or [])
    for i in range(store.n_episodes):
        text = store.episode_text(i)
        texts += [str(text[k]) for k in ("reasoning", LANGUAGE_KEY) if text.get(k)]
    return texts


class DiVLAPolicy(SharedEncoderPolicy):
    name = "divla"
    config_class = DiVLAConfig
    capabilities = Capabilities(prefix=True, extras=("reasoning",), context=True)
    learned_settings = ("tokenizer",)

    def __init__(self, config: DiVLAConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        if not config.tokenizer:
            raise ValueError("the divla head needs policy.tokenizer (the JSON vmp-train writes from the store's "
                             "annotations); train it with vmp-train policy=divla, or load a checkpoint")
        self.tokenizer = TextTokenizer(config.tokenizer, config.max_reasoning_tokens)
        vocab = self.tokenizer.vocab_size
        if config.backbone == "hf":
            arch = dict(config.backbone_config) if config.backbone_config else None
            self.backbone = HFBackbone(config.d_model, vocab, encoder.n_tokens,
                                       path=None if arch else config.backbone_path, config=arch)
        else:
            self.backbone = ScratchBackbone(config.d_model, config.backbone_layers, config.backbone_heads, vocab,
                                            encoder.n_tokens, config.max_reasoning_tokens, config.dropout)
        self.reasoning_embedding = ReasoningEmbedding(vocab, config.d_model) if config.inject_reasoning else None
        self.denoiser = TransformerDenoiser(action_dim, config.horizon, encoder.n_tokens, config.d_model,
                                            config.n_layers, config.n_heads, config.dropout,
                                            film_dim=config.d_model if config.inject_reasoning else 0)
        self.diffusion = DiscreteTimeDiffusion(config.num_train_timesteps, config.beta_schedule, "epsilon", clip_sample=True)
        self.context_every = config.reasoning_every
        self._reasoning: tuple[torch.Tensor, list[str]] | None = None  # cached (ids [B, L], texts)
        self._told: str | None = None  # reasoning_source=expert: the phase told for the current state

    @classmethod
    def batch_spec(cls, config: DiVLAConfig, task: Any) -> BatchSpec:
        return BatchSpec(text_keys=(PHASE_KEY,))

    @classmethod
    def prepare_settings(cls, config: DiVLAConfig, task: Any, store: Any) -> dict[str, Any]:
        """The subword tokenizer, trained on the store's annotations unless the config already carries one."""
        if PHASE_KEY not in store.schema or not store.phase_names:
            raise ValueError(f"the divla head learns to write the expert's phase annotations: store {store.path} has "
                             f"no 'phase' key (collect it with vmp-collect, whose experts annotate phases)")
        if config.tokenizer:
            return {}
        return {"tokenizer": train_tokenizer(annotation_corpus(store), config.vocab_size)}

    def checkpoint_settings(self) -> dict[str, Any]:
        """A Hugging Face backbone's architecture, so the checkpoint rebuilds it without the model directory."""
        return {"backbone_config": self.backbone.architecture()} if isinstance(self.backbone, HFBackbone) else {}

    def reset(self) -> None:
        super().reset()
        self._reasoning = None
        self._told = None

    @property
    def reasoning_source(self) -> str:
        return self.config.reasoning_source

    def set_reasoning(self, text: str) -> None:
        """reasoning_source=expert: the phase the task's expert gives the current state, injected with the next chunk
        in place of the generated reasoning (vmp-eval tells it every step)."""
        self._told = text

    def _given_reasoning(self, b: int, device: torch.device) -> tuple[torch.Tensor, list[str]] | None:
        """The reasoning the action head is given instead of its own (None: reasoning_source=generated)."""
        source = self.config.reasoning_source
        if source == "generated":
            return None
        text = self.config.reasoning_text if source == "text" else self._told
        if text is None:
            raise RuntimeError("policy.reasoning_source=expert needs the task's expert phase each step: vmp-eval "
                               "tells it (run with +overrides.reasoning_source=expert); nothing else does")
        return self.tokenizer.encode([text] * b, device)[:, 1:], [text] * b

    def _film(self, ids_BL: torch.Tensor) -> torch.Tensor | None:
        return self.reasoning_embedding(ids_BL) if self.reasoning_embedding is not None else None

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        actions, cond = self.training_inputs(batch)
        ids = self.tokenizer.encode(batch["text"][PHASE_KEY], actions.device)  # [B, L + 2]
        hidden, logits = self.backbone(cond, ids[:, :-1])
        reasoning_loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=self.tokenizer.pad_id)
        film = self._film(ids[:, 1:])  # the annotation (teacher forcing) is what training injects
        context = hidden if self.config.action_context == "backbone" else cond
        is_pad = batch.get("action_is_pad")
        has_action = batch.get("has_action")
        mask = None if is_pad is None else ~is_pad
        if has_action is not None:
            mask = (torch.ones_like(actions[..., 0], dtype=torch.bool) if mask is None else mask) & has_action[:, None]
        action_loss = self.diffusion.loss(lambda x, t: self.denoiser(x, t, context, film), actions, mask)
        loss = self.config.reasoning_weight * reasoning_loss + self.config.action_weight * action_loss
        return {"loss": loss, "reasoning_loss": reasoning_loss.detach(), "action_loss": action_loss.detach()}

    @torch.no_grad()
    def refresh_context(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None) -> None:
        """Write the reasoning for this observation (greedy, KV cache) and keep it until the next refresh."""
        _, ids = self.backbone.generate(self.condition(obs, goal), self.config.max_reasoning_tokens + 1,
                                        self.tokenizer.bos_id, self.tokenizer.eos_id, self.tokenizer.pad_id)
        self._reasoning = (ids, self.tokenizer.decode(ids))

    @torch.no_grad()
    def reason(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None) -> list[str]:
        """The reasoning text for a batch (B strings), as generated at run time."""
        self.refresh_context(obs, goal)
        return self._reasoning[1]

    @torch.no_grad()
    def predict(self, obs, goal=None, generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
                prefix_weights: torch.Tensor | None = None, **kwargs: Any) -> Prediction:
        """The chunk and its ``reasoning``; ``prefix`` [B, L, A] / ``prefix_weights`` [L]: real-time chunking's prefix,
        inpainted at every denoising step as in the DDPM head."""
        cond = self.condition(obs, goal)
        b = cond.shape[0]
        # the cached reasoning serves only the control loop that refreshes it (`predict_window`, every
        # reasoning_every steps); any other call reasons afresh about its own observations
        given = self._given_reasoning(b, cond.device)
        if given is None and (self._reasoning is None or self._context_step is None or self.context_every == 0
                              or self._reasoning[0].shape[0] != b):
            self.refresh_context(obs, goal)
        ids, texts = given if given is not None else self._reasoning
        context = self.backbone.encode(cond) if self.config.action_context == "backbone" else cond
        film = self._film(ids)
        known, weights = self.prefix_target(prefix, prefix_weights, b) if prefix is not None else (None, None)
        x = self.diffusion.sample(lambda x, t: self.denoiser(x, t, context, film), (b, self.horizon, self.action_dim),
                                  self.config.n_steps, self.config.sampler, generator=generator, device=cond.device,
                                  known=known, known_weights=weights)
        return Prediction(self.normalizer.unnormalize("action", x.clamp(-1.0, 1.0)), {"reasoning": list(texts)})

    def predict_action_chunk(self, obs, goal=None, generator: torch.Generator | None = None,
                             prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(obs, goal, generator, prefix=prefix, prefix_weights=prefix_weights).actions
