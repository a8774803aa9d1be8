"""Demonstration stores (zarr), sequence sampling for training, normalisation, importers.

Public API: `EpisodeStore`, `KeySpec`, `SequenceSampler`, `SequenceDataset`, `MixedSequenceDataset`, `Normalizer`.
"""

from .schema import SCHEMA_VERSION, KeySpec
from .store import CorruptChunkError, EpisodeStore, SchemaVersionError, StoreLockedError

__all__ = ["EpisodeStore", "KeySpec", "SequenceSampler", "SequenceDataset", "MixedSequenceDataset", "Normalizer",
           "StoreLockedError", "SchemaVersionError", "CorruptChunkError", "SCHEMA_VERSION"]


def __getattr__(name: str):
    # torch-dependent parts load lazily so `vmp-data info` and collection stay light.
    if name == "SequenceSampler":
        from .sampler import SequenceSampler
        return SequenceSampler
    if name == "SequenceDataset":
        from .dataset import SequenceDataset
        return SequenceDataset
    if name == "MixedSequenceDataset":
        from .dataset import MixedSequenceDataset
        return MixedSequenceDataset
    if name == "Normalizer":
        from .normalizer import Normalizer
        return Normalizer
    raise AttributeError(f"module 'vmp.data' has no attribute {name!r}")
