"""CARP: coarse-to-fine autoregressive policy (Gong et al., 2024), two heads.

- `carp_tokenizer` (stage 1): the multi-scale residual action tokenizer (`vmp.policies.nn.action_vq`), trained on the
  store's action chunks with reconstruction + VQ losses. A `StageOneModel`: `vmp-train` trains and checkpoints it like
  a head (normalizer included), but it never acts, and `vmp-eval`/`vmp-deploy` refuse its checkpoint by name.
- `carp` (stage 2): a GPT over the token maps of all scales, conditioned on the shared encoder's observation tokens
  (in the sequence) and on one projection of all of them together (adaptive layer norm). The block-causal mask lets
  every token of scale k attend to the observation tokens and every token of scales <= k; observation tokens attend to
  observation tokens only. Teacher forcing: the input at scale k > 0 is the tokenizer's cumulative f_hat of scales < k,
  downsampled to l_k (at scale 0: the observation projection plus learned start tokens); the output at scale k
  predicts scale k's tokens (cross-entropy).
  Inference: K passes, one per scale, each feeding only the new scale's tokens through a KV cache; greedy or top-k.
  Self-correction (`self_correction`, our addition, not in the paper): teacher forcing never shows the finer scales a
  wrong coarse token, but free-running inference does. In training, coarse inputs are replaced at random by the
  model's own guesses and the finer targets are re-quantized to repair them (MultiScaleActionVQ.tokenize_with_errors).
- With the per-dimension tokenizer (G = action_dim groups), one transformer token carries position j of scale k for
  all G groups (input: their G * code_dim features; output: G softmaxes over the codebook). Tokens of one scale are
  predicted independently given the coarser scales either way (next-scale prediction), so this packing changes no
  conditional the model learns, and it makes the sequence G times shorter (12 instead of 72 tokens on Lift: ~6x
  cheaper training on CPU).

The frozen tokenizer lives inside the `carp` head (its weights are in CARP's state dict). Its architecture settings are
`policy.tokenizer` (carp.yaml pulls in carp_tokenizer.yaml there), checked against `policy.tokenizer_checkpoint` when
that file is read, so a trained CARP checkpoint rebuilds and loads even after the tokenizer checkpoint is gone.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vmp.policies.base import BatchSpec, SharedEncoderPolicy, StageOneModel, has_action_stats
from vmp.policies.nn.action_vq import MultiScaleActionVQ
from vmp.policies.nn.transformer import AdaLNSelfAttnBlock, KVCache

log = logging.getLogger(__name__)

# Tokenizer settings that fix its architecture (what a CARP head must agree on with its tokenizer checkpoint).
TOKENIZER_ARCH = ("horizon", "scales", "per_dim", "codebook_size", "code_dim", "hidden_dim", "quant_resi")


@dataclasses.dataclass
class CARPTokenizerConfig:
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    scales: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    per_dim: bool = True
    codebook_size: int = 512
    code_dim: int = 8
    hidden_dim: int = 32
    quant_resi: float = 0.5
    beta: float = 0.25
    vq_weight: float = 1.0

    def __post_init__(self) -> None:
        self.scales = [int(s) for s in self.scales]
        if not self.scales or self.scales[0] < 1 or any(b <= a for a, b in zip(self.scales, self.scales[1:])):
            raise ValueError(f"policy.scales must be strictly increasing positive lengths, got {self.scales}")
        latent, ratio = self.scales[-1], self.horizon // max(self.scales[-1], 1)
        if self.horizon % latent or ratio & (ratio - 1):
            raise ValueError(f"policy.horizon={self.horizon} must be a power-of-two multiple of scales[-1]={latent}")
        if self.codebook_size < 2 or self.code_dim < 1 or self.hidden_dim < 1:
            raise ValueError(f"need codebook_size >= 2, code_dim >= 1, hidden_dim >= 1; got {self.codebook_size}, "
                             f"{self.code_dim}, {self.hidden_dim}")
        if not 0.0 <= self.quant_resi <= 1.0:
            raise ValueError(f"policy.quant_resi must be in [0, 1], got {self.quant_resi}")
        if self.beta < 0 or self.vq_weight < 0:
            raise ValueError(f"policy.beta and policy.vq_weight must be >= 0, got {self.beta}, {self.vq_weight}")


def build_tokenizer(config: CARPTokenizerConfig, action_dim: int) -> MultiScaleActionVQ:
    return MultiScaleActionVQ(
        action_dim, config.horizon, config.scales, config.per_dim, config.codebook_size, config.code_dim,
        config.hidden_dim, config.quant_resi, config.beta,
    )


class CARPTokenizer(StageOneModel):
    """Stage 1: trains the action tokenizer on action chunks only. Logs recon_mse, commit (the VQ loss) and
    codebook_usage."""

    name = "carp_tokenizer"
    config_class = CARPTokenizerConfig

    @classmethod
    def batch_spec(cls, config: Any, task: Any) -> BatchSpec:
        """Actions only: the tokenizer reads no observation (no image decoding for it)."""
        return BatchSpec(keys=())

    def __init__(self, config: CARPTokenizerConfig, normalizer, action_dim: int):
        super().__init__()
        self.config, self.normalizer, self.action_dim = config, normalizer, action_dim
        self.vq = build_tokenizer(config, action_dim)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The whole chunk is reconstructed, edge padding included: CARP predicts (and so tokenizes) padded chunks too."""
        actions = self.normalizer.normalize("action", batch["action"])
        if batch.get("has_action") is not None:  # action-free (video) samples carry no chunk to tokenize
            actions = actions[batch["has_action"]]
        if actions.shape[0] == 0:
            zero = sum(p.sum() for p in self.vq.parameters()) * 0.0
            return {"loss": zero, "recon_mse": zero.detach(), "commit": zero.detach(), "codebook_usage": zero.detach()}
        f_hat, idx_list, vq_loss = self.vq.quantize(self.vq.encode(actions))
        recon_mse = F.mse_loss(self.vq.decode(f_hat), actions)
        return {
            "loss": recon_mse + self.config.vq_weight * vq_loss,
            "recon_mse": recon_mse.detach(),
            "commit": vq_loss.detach(),
            "codebook_usage": self.vq.codebook_usage(idx_list),
        }

    @torch.no_grad()
    def reconstruct(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw actions [B, H, A] -> tokenize -> decode -> raw actions [B, H, A] (what CARP can at best reproduce)."""
        nact = self.normalizer.normalize("action", actions)
        return self.normalizer.unnormalize("action", self.vq.decode_tokens(self.vq.tokenize(nact)))


@dataclasses.dataclass
class CARPConfig:
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    d_model: int = 64  # width of the shared observation encoder's tokens
    width: int = 64  # transformer width
    depth: int = 8
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    label_smoothing: float = 0.0
    # Probability that a coarse token fed to the transformer in training is its own teacher-forced prediction rather
    # than the ground truth; finer targets are then re-quantized so they correct it (0: plain teacher forcing).
    self_correction: float = 0.5
    tokenizer_checkpoint: str | None = None
    tokenizer: dict = dataclasses.field(default_factory=dict)  # the carp_tokenizer settings (architecture)
    # inference-time settings
    sampling: str = "greedy"  # greedy | top_k
    top_k: int = 10
    temperature: float = 1.0
    kv_cache: bool = True

    def __post_init__(self) -> None:
        if self.sampling not in ("greedy", "top_k"):
            raise ValueError(f"policy.sampling must be greedy or top_k, got {self.sampling!r}")
        if self.top_k < 1 or self.temperature <= 0:
            raise ValueError(f"need policy.top_k >= 1 and policy.temperature > 0, got {self.top_k}, {self.temperature}")
        if self.width % self.n_heads:
            raise ValueError(f"policy.width={self.width} must be divisible by policy.n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"policy.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.self_correction <= 1.0:
            raise ValueError(f"policy.self_correction must be in [0, 1], got {self.self_correction}")
        # d_model: the unused encoder width that tokenizer configs carried before the tokenizer became a stage-one
        # model; CARP checkpoints saved then still hold it in policy.tokenizer
        fields = {k: v for k, v in dict(self.tokenizer).items() if k not in ("name", "d_model")}
        known = set(CARPTokenizerConfig.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"policy.tokenizer.{unknown[0]} is not a carp_tokenizer setting; its settings: {sorted(known)}")
        self.tokenizer_config = CARPTokenizerConfig(**fields)
        if self.tokenizer_config.horizon != self.horizon:
            raise ValueError(f"policy.horizon={self.horizon} differs from policy.tokenizer.horizon={self.tokenizer_config.horizon}")


class NextScaleTransformer(nn.Module):
    """[observation tokens | scale 0 | scale 1 | ... | scale K-1] -> logits [B, T, G, V] at every action token
    (T = sum of the scale lengths; G groups of V codebook entries per token).

    Sequence position p has level 0 for observation tokens and k + 1 for scale k; position i may attend to j iff
    level[j] <= level[i] (the block-causal mask, a buffer built once).
    """

    def __init__(self, n_cond_tokens: int, cond_dim: int, in_dim: int, tokens_per_scale: list[int], groups: int, vocab: int,
                 width: int, depth: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.n_cond, self.tokens_per_scale, self.groups, self.vocab = n_cond_tokens, list(tokens_per_scale), groups, vocab
        n_act = sum(tokens_per_scale)
        self.cond_in = nn.Linear(cond_dim, width)
        self.cond_pos = nn.Parameter(torch.randn(1, n_cond_tokens, width) * 0.02)
        # The adaLN vector sees every observation token through its own weights (a projection of their concatenation,
        # as the authors' obs_embed); a mean of projected tokens would blur which step, camera or goal said what.
        self.cond_vec = nn.Linear(n_cond_tokens * cond_dim, width)
        self.word_in = nn.Linear(in_dim, width)
        self.start = nn.Parameter(torch.randn(1, tokens_per_scale[0], width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n_act, width) * 0.02)
        self.level_emb = nn.Embedding(len(tokens_per_scale) + 1, width)
        nn.init.normal_(self.level_emb.weight, std=0.02)
        self.blocks = nn.ModuleList(AdaLNSelfAttnBlock(width, n_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, groups * vocab)
        levels = torch.cat([torch.zeros(n_cond_tokens, dtype=torch.long)] +
                           [torch.full((n,), k + 1, dtype=torch.long) for k, n in enumerate(tokens_per_scale)])
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("mask", levels[None, :] <= levels[:, None], persistent=False)  # [S, S], True = may attend
        ends = torch.cumsum(torch.tensor([n_cond_tokens] + self.tokens_per_scale), 0).tolist()
        # bounds[k] = (first, last + 1) sequence positions of scale k
        self.bounds = [(ends[k], ends[k + 1]) for k in range(len(self.tokens_per_scale))]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def embed_cond(self, cond_BND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation tokens [B, N, D] -> (sequence embeddings [B, N, W], adaLN vector [B, W])."""
        if cond_BND.shape[1] != self.n_cond:
            raise ValueError(f"expected {self.n_cond} observation tokens, got {cond_BND.shape[1]}")
        tokens = self.cond_in(cond_BND)
        return tokens + self.cond_pos + self.level_emb.weight[0], self.cond_vec(cond_BND.flatten(1))

    def embed_scale(self, k: int, c_BW: torch.Tensor, inputs_BnC: torch.Tensor | None) -> torch.Tensor:
        """Scale k's input tokens -> [B, l_k, W]: at k = 0 the observation vector plus learned start tokens (the
        authors' start-of-sequence), else the projected f_hat features."""
        first, last = self.bounds[k]
        x = c_BW[:, None] + self.start if k == 0 else self.word_in(inputs_BnC)
        return x + self.pos[:, first - self.n_cond : last - self.n_cond] + self.level_emb.weight[k + 1]

    def modulations(self, c_BW: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """adaLN vector -> the adaLN parameters of every block, then (shift, 1 + scale) of the output norm. One set
        serves every scale of a chunk (c does not change between them), so generation computes it once, not once per
        scale."""
        shift, scale = self.ada_out(c_BW)[:, None].chunk(2, dim=-1)
        return [block.modulation(c_BW) for block in self.blocks] + [(shift, 1 + scale)]

    def run(self, x_BSW: torch.Tensor, mods: list[tuple[torch.Tensor, ...]], start: int, cache: KVCache | None
            ) -> torch.Tensor:
        """Blocks over sequence positions [start, start + S) (earlier ones come from the cache) -> logits [B, S, G, V]."""
        end = start + x_BSW.shape[1]
        mask = self.mask[start:end, :end]
        for layer, (block, mod) in enumerate(zip(self.blocks, mods)):
            x_BSW = block(x_BSW, mod, mask, cache, layer)
        shift, gain = mods[-1]
        logits = self.head(self.norm_out(x_BSW) * gain + shift)
        return rearrange(logits, "b s (g v) -> b s g v", g=self.groups)

    def forward(self, cond_BND: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Teacher forcing: inputs for scales 1..K-1, each [B, l_k, G*C] -> logits for every action token [B, T, G, V]."""
        obs, c = self.embed_cond(cond_BND)
        x = torch.cat([obs] + [self.embed_scale(k, c, inputs[k - 1] if k else None) for k in range(len(self.bounds))], dim=1)
        return self.run(x, self.modulations(c), 0, None)[:, self.n_cond :]


class CARPPolicy(SharedEncoderPolicy):
    """Stage 2: next-scale prediction of the frozen tokenizer's tokens. Logs accuracy (per token, teacher-forced)."""

    name = "carp"
    config_class = CARPConfig

    def __init__(self, config: CARPConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        self.vq = build_tokenizer(config.tokenizer_config, action_dim)
        self._load_tokenizer(config, normalizer)
        self.vq.requires_grad_(False)
        self.vq.eval()
        self.gpt = NextScaleTransformer(
            encoder.n_tokens, encoder.d_model, self.vq.groups * self.vq.code_dim, list(self.vq.scales), self.vq.groups,
            self.vq.codebook_size, config.width, config.depth, config.n_heads, config.mlp_ratio, config.dropout,
        )

    def _load_tokenizer(self, config: CARPConfig, normalizer) -> None:
        """Copy the EMA weights of `config.tokenizer_checkpoint` into `self.vq`, after checking they fit.

        Not read when the normalizer has no statistics yet: the head is then being rebuilt to load a CARP checkpoint,
        whose state dict holds the tokenizer (the file may be gone or retrained since). `tokenizer_checkpoint: null`
        keeps an untrained tokenizer (tests only).
        """
        path = config.tokenizer_checkpoint
        if not has_action_stats(normalizer):
            return
        if not path:
            log.warning("policy.tokenizer_checkpoint is null: CARP is built on an untrained tokenizer")
            return
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"policy.tokenizer_checkpoint={path!r} does not exist: train the tokenizer first "
                "(vmp-train policy=carp_tokenizer) and point policy.tokenizer_checkpoint at its checkpoints/latest.pt"
            )
        from vmp.policies.checkpoint import load_model

        tok, tok_cfg = load_model(path)
        if tok_cfg.policy.name != CARPTokenizer.name:
            raise ValueError(f"policy.tokenizer_checkpoint={path} holds a {tok_cfg.policy.name!r} head, not carp_tokenizer")
        for field in TOKENIZER_ARCH:
            ours, theirs = getattr(config.tokenizer_config, field), getattr(tok.config, field)
            if ours != theirs:
                raise ValueError(f"policy.tokenizer.{field}={ours!r} but {path} was trained with {theirs!r}: "
                                 f"set policy.tokenizer.{field}={theirs!r}")
        if tok.action_dim != self.action_dim:
            raise ValueError(f"{path} tokenizes {tok.action_dim}-D actions, this task has action_dim={self.action_dim}")
        if has_action_stats(normalizer):
            ours, theirs = normalizer.stats("action"), tok.normalizer.stats("action")
            if not all(torch.allclose(ours[s], theirs[s], rtol=1e-4, atol=1e-6) for s in ("scale", "offset")):
                raise ValueError(f"{path} was trained with different action statistics (another store?) than this run")
        self.vq.load_state_dict(tok.vq.state_dict())
        log.info("loaded frozen tokenizer from %s", path)

    def train(self, mode: bool = True):
        """The tokenizer stays frozen in eval mode whatever the trainer asks."""
        super().train(mode)
        self.vq.eval()
        return self

    @staticmethod
    def _to_tokens(idx_BGl: torch.Tensor) -> torch.Tensor:
        """Tokenizer layout [B, G, l] -> transformer layout [B, l, G]."""
        return rearrange(idx_BGl, "b g l -> b l g")

    def _split_scales(self, idx_BTG: torch.Tensor) -> list[torch.Tensor]:
        """Tokens of all scales in transformer layout [B, T, G] -> idx per scale [B, G, l_k]."""
        return [rearrange(x, "b l g -> b g l") for x in idx_BTG.split(list(self.vq.scales), dim=1)]

    @staticmethod
    def _to_inputs(x_BGCl: torch.Tensor) -> torch.Tensor:
        """[B, G, C, l] -> one input vector per position [B, l, G*C]."""
        return rearrange(x_BGCl, "b g c l -> b l (g c)")

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy over every token of every scale. Not padding-masked: a token summarises a span of the chunk,
        and the edge-padded chunks the sampler yields near an episode's end are what the policy must produce there.

        With `self_correction` > 0 (training only) a first, gradient-free pass predicts every scale under teacher
        forcing; each coarse token is then replaced by that prediction with this probability, and the targets of the
        finer scales are re-quantized from what remains of the latent, so the model learns to repair its own slips
        instead of meeting them for the first time in closed loop.
        """
        actions = self.normalizer.normalize("action", batch["action"])
        cond = self.condition(batch["obs"], batch.get("goal"))
        with torch.no_grad():
            f = self.vq.encode(actions)
            idx_list = self.vq.quantize(f)[1]
            inputs = [self._to_inputs(x) for x in self.vq.teacher_inputs(idx_list)]
            if self.training and self.config.self_correction > 0:
                guess = self._split_scales(self.gpt(cond, inputs).argmax(-1))
                use = [torch.rand(g.shape, device=g.device) < self.config.self_correction for g in guess]
                idx_list, inputs = self.vq.tokenize_with_errors(f, guess, use)
                inputs = [self._to_inputs(x) for x in inputs]
        logits_BTGV = self.gpt(cond, inputs)
        target_BTG = torch.cat([self._to_tokens(i) for i in idx_list], dim=1)
        ce_B = F.cross_entropy(logits_BTGV.flatten(0, 2), target_BTG.flatten(), label_smoothing=self.config.label_smoothing,
                               reduction="none").view(target_BTG.shape[0], -1).mean(1)
        correct_B = (logits_BTGV.argmax(-1) == target_BTG).float().flatten(1).mean(1)
        # action-free (video) samples have no tokens to predict: weight 0
        w_B = batch["has_action"].float() if batch.get("has_action") is not None else torch.ones_like(ce_B)
        n = w_B.sum().clamp(min=1.0)
        return {"loss": (ce_B * w_B).sum() / n, "accuracy": ((correct_B * w_B).sum() / n).detach()}

    # ---- inference ----
    def _sample(self, logits_BlGV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """logits [B, l, G, V] -> idx [B, l, G]: argmax, or a draw among the top_k after temperature."""
        cfg = self.config
        if cfg.sampling == "greedy":
            return logits_BlGV.argmax(dim=-1)
        logits = logits_BlGV / cfg.temperature
        top = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1)
        probs = torch.softmax(top.values, dim=-1).flatten(0, -2)
        choice = torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])
        return top.indices.gather(-1, choice[..., None]).squeeze(-1)

    @torch.no_grad()
    def generate_tokens(self, cond_BND: torch.Tensor, generator: torch.Generator | None = None,
                        kv_cache: bool | None = None) -> list[torch.Tensor]:
        """Conditioning tokens -> idx per scale [B, G, l_k], one scale per transformer pass.

        With the KV cache each pass feeds only the new scale's tokens (the first also the observation tokens); without
        it every pass re-runs the whole prefix. Both give the same tokens (tested).
        """
        use_cache = self.config.kv_cache if kv_cache is None else kv_cache
        gpt = self.gpt
        obs, c = gpt.embed_cond(cond_BND)
        mods = gpt.modulations(c)
        cache = KVCache(gpt.depth) if use_cache else None
        prefix = [obs]  # embeddings fed so far (only used without the cache)
        f_hat, nxt, idx_list = None, None, []
        for k in range(len(self.vq.scales)):
            x_k = gpt.embed_scale(k, c, None if k == 0 else self._to_inputs(nxt))
            if cache is not None:
                fed = torch.cat([obs, x_k], dim=1) if k == 0 else x_k
                logits = gpt.run(fed, mods, cache.length, cache)
            else:
                prefix.append(x_k)
                logits = gpt.run(torch.cat(prefix, dim=1), mods, 0, None)
            idx = self._sample(logits[:, -x_k.shape[1] :], generator)
            idx = rearrange(idx, "b l g -> b g l")
            idx_list.append(idx)
            f_hat, nxt = self.vq.add_scale(k, idx, f_hat)
        return idx_list

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, ...]} (raw) -> actions [B, horizon, action_dim] (unnormalized)."""
        cond = self.condition(obs, goal)
        idx_list = self.generate_tokens(cond, generator)
        return self.normalizer.unnormalize("action", self.vq.decode_tokens(idx_list).clamp(-1.0, 1.0))
