"""Chunk checksums: a flipped byte on disk fails the read with an error naming array, episode and store (reads,
`vmp-data validate --deep`, the training sampler and DataLoader workers), never reads back as data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.codecs

import vmp.data.store as store_module
from vmp.data import EpisodeStore
from vmp.data.cli import main, validate_store
from vmp.data.store import CorruptChunkError, has_checksum
from vmp.data.testing import demo_schema, make_store

LENGTHS = [6, 5, 7, 4]  # episode 2 holds steps 11-17
SCHEMA = demo_schema(image_size=8, state_dim=3, action_dim=2)


def _flip(path: Path, offset: int | None = None) -> None:
    """Flip one bit of a chunk file (the middle byte unless ``offset``)."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if offset is None else offset] ^= 0x04
    path.write_bytes(bytes(raw))


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")


def _image_chunk(store: Path, t: int) -> Path:
    return store / "data" / "agentview_image" / f"c.{t}.0.0.0"


@pytest.fixture
def store_path(tmp_path) -> Path:
    make_store(tmp_path / "s.zarr", LENGTHS, schema=SCHEMA, random_images=True)
    return tmp_path / "s.zarr"


def test_new_store_checksums_every_array(store_path):
    store = EpisodeStore.open(store_path)
    assert store.unchecksummed() == []
    assert all(has_checksum(store.array(k)) for k in store.keys)
    assert has_checksum(zarr.open_array(store_path / "meta" / "has_action", mode="r"))  # created by append_episode
    for i, n in enumerate(LENGTHS):  # values round-trip through the extra codec
        assert store.episode(i)["state"].shape == (n, 3)
    assert validate_store(store_path, deep=True) == []


def test_flipped_image_byte_names_array_episode_and_store(store_path, capsys):
    _flip(_image_chunk(store_path, 13))  # episode 2
    store = EpisodeStore.open(store_path)
    store.episode(1)  # other episodes still read
    with pytest.raises(CorruptChunkError, match="checksum") as info:
        store.episode(2)
    msg = str(info.value)
    assert str(store_path) in msg and "data/agentview_image chunk 13" in msg and "episode 2" in msg
    assert info.value.key == "data/agentview_image" and info.value.episodes == [2]
    assert isinstance(info.value.__cause__, ValueError)  # zarr's own error, chained

    assert main(["validate", str(store_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "data/agentview_image chunk 13" in out and "episode 2" in out
    assert main(["validate", str(store_path)]) == 0  # without --deep: structure only, as before
    assert "OK" in capsys.readouterr().out


def test_flipped_lowdim_byte_names_every_episode_of_the_chunk(store_path, capsys):
    for name in ("state", "action"):  # low-dim chunks hold every episode here
        (chunk,) = _chunk_files(store_path / "data" / name)
        _flip(chunk)
    with pytest.raises(CorruptChunkError) as info:
        EpisodeStore.open(store_path).episode(3, keys=["state"])
    assert "data/state chunk 0" in str(info.value) and "episodes 0-3" in str(info.value)
    assert info.value.episodes == [0, 1, 2, 3]
    assert main(["validate", str(store_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "data/state chunk 0" in out and "data/action chunk 0" in out
    assert validate_store(store_path) and "data/action" in validate_store(store_path)[0]  # a finding, not a crash


def test_flipped_checksum_byte_and_episode_ends(store_path):
    _flip(_image_chunk(store_path, 0), offset=-1)  # the stored crc32c itself
    with pytest.raises(CorruptChunkError, match="episode 0"):
        EpisodeStore.open(store_path).episode(0)
    _flip(_chunk_files(store_path / "meta" / "episode_ends")[0])
    with pytest.raises(CorruptChunkError, match="meta/episode_ends chunk 0"):
        EpisodeStore.open(store_path)
    assert "meta/episode_ends" in validate_store(store_path, deep=True)[0]


@pytest.mark.parametrize("fast_reads", [True, False])
def test_sampler_and_dataset_raise_the_named_error(store_path, fast_reads):
    from vmp.data.dataset import SequenceDataset
    from vmp.data.sampler import FrameReader, SequenceSampler

    _flip(_image_chunk(store_path, 13))
    sampler = SequenceSampler(store_path, n_obs_steps=2, horizon=4, split="all", fast_reads=fast_reads)
    assert isinstance(sampler._arrays()["agentview_image"], FrameReader) == fast_reads

    def obs_rows(i: int) -> np.ndarray:
        episode, t0 = sampler.window(i)
        return sampler._steps(np.array([episode]), np.array([t0]))[0][0, :sampler.n_obs_steps]

    bad = [i for i in range(len(sampler)) if 13 in obs_rows(i)]  # windows observing the damaged frame
    good = [i for i in range(len(sampler)) if i not in bad]
    sampler.sample_batch(good)
    for read in (lambda: sampler[bad[0]], lambda: sampler.sample_batch(bad),
                 lambda: SequenceDataset(sampler).__getitems__(bad)):
        with pytest.raises(CorruptChunkError, match=r"data/agentview_image chunk 13 .*episode 2"):
            read()


def test_sampler_refuses_a_corrupted_lowdim_array_at_start(store_path):
    from vmp.data.sampler import SequenceSampler

    _flip(_chunk_files(store_path / "data" / "action")[0])
    with pytest.raises(CorruptChunkError, match="data/action chunk 0"):
        SequenceSampler(store_path, n_obs_steps=1, horizon=2)


def test_dataloader_worker_keeps_the_message(store_path):
    import torch

    from vmp.data.dataset import SequenceDataset
    from vmp.data.sampler import SequenceSampler

    _flip(_image_chunk(store_path, 13))
    loader = torch.utils.data.DataLoader(SequenceDataset(SequenceSampler(store_path, horizon=2, split="all")),
                                         batch_size=64, num_workers=1)
    with pytest.raises(CorruptChunkError, match=r"data/agentview_image chunk 13 \(steps 13-13, episode 2\)"):
        next(iter(loader))


def test_old_store_without_checksums_opens_and_deep_validate_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "old.zarr"
    with monkeypatch.context() as m:  # the codecs stores were written with before checksums
        m.setattr(store_module, "_compressors", lambda codec: zarr.codecs.BloscCodec(**codec))
        make_store(path, LENGTHS[:2], schema=SCHEMA, random_images=True)
    store = EpisodeStore.open(path)
    assert not any(has_checksum(store.array(k)) for k in store.keys)
    assert set(store.unchecksummed()) == {"data/agentview_image", "data/state", "data/action", "meta/episode_ends",
                                          "meta/has_action"}
    np.testing.assert_array_equal(store.episode(1)["state"][:, 0], 1000 + np.arange(LENGTHS[1]))
    assert main(["validate", str(path), "--deep"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "no checksums" in out and "data/agentview_image" in out

    from vmp.data.sampler import FrameReader, SequenceSampler

    sampler = SequenceSampler(path, horizon=2, split="all")  # the fast image reader still reads old stores
    assert isinstance(sampler._arrays()["agentview_image"], FrameReader)
    sampler.sample_batch(range(len(sampler)))
    _flip(_image_chunk(path, 1), offset=0)  # a damaged Blosc header still fails to decode: named too
    with pytest.raises(CorruptChunkError, match="could not be decoded"):
        EpisodeStore.open(path).episode(0)
    with pytest.raises(CorruptChunkError, match="episode 0"):
        sampler.sample_batch([0, 1])
