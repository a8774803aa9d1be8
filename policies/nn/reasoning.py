"""Diffusion-VLA's reasoning model: a subword tokenizer trained on the annotation corpus, the `Backbone` interface
(observation tokens -> hidden states; reasoning text generated greedily with a KV cache) and its from-scratch default.

The tokenizer is a WordPiece model trained with Hugging Face `tokenizers` on the experts' phase and reasoning text
and the instructions; its JSON travels in the checkpoint's config, so a checkpoint decodes without the store.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from vmp.policies.nn.transformer import AdaLNSelfAttnBlock, KVCache

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL = (PAD, BOS, EOS, UNK)  # ids 0..3 in this order


def train_tokenizer(texts: list[str], vocab_size: int = 256) -> str:
    """A lower-casing WordPiece tokenizer trained on ``texts`` -> its JSON (what the checkpoint keeps)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    corpus = [t for t in texts if t and t.strip()]
    if not corpus:
        raise ValueError("no annotation text to train the reasoning tokenizer on (the store's phase/reasoning/language)")
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL)))
    return tok.to_str()


class TextTokenizer:
    """Text <-> fixed-length id rows [BOS, tokens..., EOS, PAD...] of ``max_len`` + 2."""

    def __init__(self, json_str: str, max_len: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(json_str)
        self.max_len = max_len
        ids = [self.tok.token_to_id(s) for s in SPECIAL]
        if ids != [0, 1, 2, 3]:
            raise ValueError(f"reasoning tokenizer: special tokens {SPECIAL} must have ids 0..3, got {ids}")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """B strings -> long [B, max_len + 2]; text beyond max_len tokens is cut (its EOS kept)."""
        rows = []
        for text in texts:
            ids = self.tok.encode(text or "").ids[: self.max_len]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (self.max_len + 2 - len(row)))
        return torch.tensor(rows, dtype=torch.long, device=device)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """long [B, L] (generated tokens, no BOS) -> B strings, each up to its first EOS."""
        out = []
        for row in ids.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            out.append(self.tok.decode([i for i in row if i > self.unk_id]))
        return out


def greedy_decode(next_logits, batch: int, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int,
                  device: torch.device) -> torch.Tensor:
    """Greedy decoding from BOS: ``next_logits(token [B, 1], position) -> [B, V]`` feeds one token and returns the
    logits of the next (the caller's KV cache holds the past) -> ids [B, max_new_tokens], PAD after each row's EOS."""
    token = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = []
    for i in range(max_new_tokens):
        nxt = next_logits(token, i).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        token = nxt[:, None]
    ids = torch.stack(out, dim=1)
    return F.pad(ids, (0, max_new_tokens - ids.shape[1]), value=pad_id) if ids.shape[1] < max_new_tokens else ids


class Backbone(nn.Module, abc.ABC):
    """Observation tokens (images, proprioception and the instruction, as the shared encoder gives them) -> hidden
    states for the action head, and reasoning text as token ids, generated token by token with a KV cache."""

    width: int

    @abc.abstractmethod
    def forward(self, prefix_BND: torch.Tensor, reasoning_in_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: (hidden states of the prefix [B, N, W], next-token logits [B, L, V] for the reasoning)."""

    @abc.abstractmethod
    def encode(self, prefix_BND: torch.Tensor) -> torch.Tensor:
        """Hidden states of the prefix alone [B, N, W] (the action step between reasoning refreshes)."""

    @abc.abstractmethod
    def generate(self, prefix_BND: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding -> (hidden states of the prefix [B, N, W], generated ids [B, max_new_tokens], PAD after
        each row's EOS)."""


class ScratchBackbone(Backbone):
    """A small prefix-LM transformer trained from scratch: the observation prefix attends to itself in both directions,
    the reasoning tokens causally to the prefix and to the tokens before them."""

    def __init__(self, width: int, n_layers: int, n_heads: int, vocab_size: int, n_prefix: int, max_len: int,
                 dropout: float = 0.0):
        super().__init__()
        self.width, self.n_prefix, self.max_len = width, n_prefix, max_len
        self.token_emb = nn.Embedding(vocab_size, width)
        self.prefix_pos = nn.Parameter(torch.zeros(1, n_prefix, width))
        self.text_pos = nn.Parameter(torch.zeros(1, max_len + 2, width))
        nn.init.normal_(self.prefix_pos, std=0.02)
        nn.init.normal_(self.text_pos, std=0.02)
        self.blocks = nn.ModuleList(AdaLNSelfAttnBlock(width, n_heads, 4.0, dropout) for _ in range(n_layers))
        self.cond = nn.Parameter(torch.zeros(1, width))  # the blocks' adaLN input: one learned vector
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size)

    def _modulations(self, batch: int) -> list[tuple[torch.Tensor, ...]]:
        """Every block's adaLN parameters: the condition is one learned vector, so a generation computes them once."""
        c = self.cond.expand(batch, -1)
        return [block.modulation(c) for block in self.blocks]

    def _run(self, x_BSW: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
             mods: list[tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
        mods = self._modulations(x_BSW.shape[0]) if mods is None else mods
        for i, (block, mod) in enumerate(zip(self.blocks, mods)):
            x_BSW = block(x_BSW, mod, mask, cache, i)
        return self.norm(x_BSW)

    def _prefix(self, prefix_BND: torch.Tensor) -> torch.Tensor:
        if prefix_BND.shape[1:] != (self.n_prefix, self.width):
            raise ValueError(f"expected prefix [B, {self.n_prefix}, {self.width}], got {tuple(prefix_BND.shape)}")
        return prefix_BND + self.prefix_pos

    def forward(self, prefix_BND: torch.Tensor, reasoning_in_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, length = self.n_prefix, reasoning_in_BL.shape[1]
        x = torch.cat([self._prefix(prefix_BND), self.token_emb(reasoning_in_BL) + self.text_pos[:, :length]], dim=1)
        s = n + length
        q = torch.arange(s, device=x.device)[:, None]
        k = torch.arange(s, device=x.device)[None, :]
        mask = (k < n) | ((q >= n) & (k <= q))  # prefix-LM: the prefix never sees the reasoning
        out = self._run(x, mask, None)
        return out[:, :n], self.lm_head(out[:, n:])

    def encode(self, prefix_BND: torch.Tensor) -> torch.Tensor:
        return self._run(self._prefix(prefix_BND), None, None)

    @torch.no_grad()
    def generate(self, prefix_BND: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if max_new_tokens > self.max_len + 1:
            raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the {self.max_len + 1} positions trained")
        cache = KVCache(len(self.blocks))
        mods = self._modulations(prefix_BND.shape[0])
        hidden = self._run(self._prefix(prefix_BND), None, cache, mods)  # the prefix attends to itself only
        # one new token per step; keys and values of the past come from the cache
        def next_logits(token: torch.Tensor, i: int) -> torch.Tensor:
            return self.lm_head(self._run(self.token_emb(token) + self.text_pos[:, i:i + 1], None, cache, mods)[:, -1])

        return hidden, greedy_decode(next_logits, prefix_BND.shape[0], max_new_tokens, bos_id, eos_id, pad_id,
                                     prefix_BND.device)


class ReasoningEmbedding(nn.Module):
    """Reasoning ids [B, L] -> one vector [B, W]: the mean of its token embeddings (padding and specials excluded)
    through an MLP; what FiLM injects into every layer of the action head."""

    def __init__(self, vocab_size: int, width: int, n_special: int = len(SPECIAL)):
        super().__init__()
        self.n_special = n_special
        self.emb = nn.Embedding(vocab_size, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        keep = (ids_BL >= self.n_special).float()[..., None]
        mean = (self.emb(ids_BL) * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.mlp(mean)


class HFBackbone(Backbone):
    """A Hugging Face decoder language model (`transformers`, an optional extra) behind the same interface: the
    observation tokens enter as input embeddings through a linear projector (as LLaVA-style VLMs feed their vision
    features), the reasoning is generated with the model's own KV cache (``past_key_values``), and its last hidden
    states are projected back for the action head. The reasoning vocabulary is the annotation tokenizer's: the
    model's token embeddings and output layer are resized to it; its transformer layers keep their weights.

    ``path``: a model directory on disk (never downloaded); or ``config``: a config dict (``model_type`` + sizes)
    for a randomly initialised model, which is also how a checkpoint rebuilds it (`architecture`)."""

    def __init__(self, width: int, vocab_size: int, n_prefix: int, path: str | None = None, config: dict | None = None):
        super().__init__()
        try:
            import transformers
        except ImportError as exc:
            raise ImportError("policy.backbone=hf needs transformers: pip install 'vmp[vla]'") from exc
        if (path is None) == (config is None):
            raise ValueError("policy.backbone=hf needs exactly one of policy.backbone_path (a model directory on disk) "
                             "and policy.backbone_config (a config dict)")
        if path is not None:
            self.lm = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        else:
            config = dict(config)
            model_type = config.pop("model_type", None)
            if model_type is None:
                raise ValueError("policy.backbone_config needs model_type (e.g. llama, qwen2)")
            self.lm = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **config))
        self.lm.resize_token_embeddings(vocab_size)
        self.width, self.n_prefix = width, n_prefix
        hidden = self.lm.config.hidden_size
        self.proj_in = nn.Linear(width, hidden)
        self.proj_out = nn.Linear(hidden, width)

    def architecture(self) -> dict:
        """The model's config as a dict (what rebuilds it without the directory)."""
        return {k: v for k, v in self.lm.config.to_diff_dict().items() if not k.startswith("_")}

    def _embed_prefix(self, prefix_BND: torch.Tensor) -> torch.Tensor:
        if prefix_BND.shape[1:] != (self.n_prefix, self.width):
            raise ValueError(f"expected prefix [B, {self.n_prefix}, {self.width}], got {tuple(prefix_BND.shape)}")
        return self.proj_in(prefix_BND)

    def forward(self, prefix_BND: torch.Tensor, reasoning_in_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = torch.cat([self._embed_prefix(prefix_BND), self.lm.get_input_embeddings()(reasoning_in_BL)], dim=1)
        out = self.lm(inputs_embeds=embeds, output_hidden_states=True)
        n = self.n_prefix
        return self.proj_out(out.hidden_states[-1][:, :n]), out.logits[:, n:]

    def encode(self, prefix_BND: torch.Tensor) -> torch.Tensor:
        out = self.lm(inputs_embeds=self._embed_prefix(prefix_BND), output_hidden_states=True)
        return self.proj_out(out.hidden_states[-1])

    @torch.no_grad()
    def generate(self, prefix_BND: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(inputs_embeds=self._embed_prefix(prefix_BND), output_hidden_states=True, use_cache=True)
        hidden, state = self.proj_out(out.hidden_states[-1]), {"past": out.past_key_values}

        def next_logits(token: torch.Tensor, i: int) -> torch.Tensor:
            step = self.lm(input_ids=token, past_key_values=state["past"], use_cache=True)
            state["past"] = step.past_key_values
            return step.logits[:, -1]

        return hidden, greedy_decode(next_logits, prefix_BND.shape[0], max_new_tokens, bos_id, eos_id, pad_id,
                                     prefix_BND.device)
