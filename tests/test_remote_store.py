"""Stores on object storage: a real S3-compatible server (moto's, through s3fs) serves a store that trains and samples
exactly like its local copy, read through the local chunk cache."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from vmp.data import EpisodeStore, SequenceSampler  # noqa: E402
from vmp.data.testing import make_learnable_lift_store, make_store  # noqa: E402
from vmp.policies.checkpoint import read_checkpoint  # noqa: E402
from vmp.policies.train import train  # noqa: E402

from test_policies_train import compose_cfg  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    """(endpoint URL, s3fs file system) of a moto S3 server on a free local port, with bucket `stores`."""
    import s3fs

    server = moto_server.ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("stores")
    yield endpoint, fs
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def upload(fs, local, name: str) -> str:
    fs.put(str(local), f"stores/{name}", recursive=True)
    return f"s3://stores/{name}"


def test_s3_store_trains_like_its_local_copy(s3, tmp_path, monkeypatch):
    endpoint, fs = s3
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    local = make_learnable_lift_store(tmp_path / "lift.zarr")
    url = upload(fs, local, "lift.zarr")
    options = {"client_kwargs": {"endpoint_url": endpoint}}

    remote = EpisodeStore.open(url, storage_options=options)
    assert remote.path == url and remote.n_episodes == EpisodeStore.open(local).n_episodes
    kwargs = dict(keys=["eef_pos", "object"], n_obs_steps=2, horizon=8, n_action_steps=4)
    a, b = SequenceSampler(local, **kwargs), SequenceSampler(remote, **kwargs)
    batch_a, batch_b = a.sample_batch(np.arange(0, len(a), 7)), b.sample_batch(np.arange(0, len(b), 7))
    for key in ("eef_pos", "object"):
        np.testing.assert_array_equal(batch_a["obs"][key], batch_b["obs"][key])
    np.testing.assert_array_equal(batch_a["action"], batch_b["action"])

    common = ["training.steps=6", "training.val_ratio=0.2", "training.ckpt_every=6"]
    from_local = read_checkpoint(train(compose_cfg(local, tmp_path / "local", *common)))
    from_s3 = read_checkpoint(train(compose_cfg(url, tmp_path / "s3", *common,
                                                f"store_options={{client_kwargs: {{endpoint_url: \"{endpoint}\"}}}}")))
    for key, value in from_local["policy"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(from_s3["policy"][key], value, rtol=0, atol=0, msg=f"{key} differs")
    assert from_s3["budget"]["n_demos"] == from_local["budget"]["n_demos"]
    cached = [p for p in (tmp_path / "cache" / "stores").rglob("*") if p.is_file() and "/data/" in str(p)]
    assert cached, "nothing was cached locally"


def remote_reader(sampler):
    from vmp.data.sampler import FrameReader

    reader = sampler._arrays()["agentview_image"]
    return reader if isinstance(reader, FrameReader) else None


def test_s3_image_frames_come_through_the_cache(s3, tmp_path, monkeypatch):
    """Image frames (one chunk each) read from S3 once, then from the local cache: the second reader gets the same
    frames with the server's copy deleted. `prefetch` completes the cache at once, and readers then take the fast
    path over its files. Forked DataLoader workers reopen the remote store."""
    endpoint, fs = s3
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    local = make_store(tmp_path / "img.zarr", [12, 9], random_images=True).path
    url = upload(fs, local, "img.zarr")
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    kwargs = dict(keys=["agentview_image", "state"], n_obs_steps=2, horizon=4, n_action_steps=2, split="all")
    want = SequenceSampler(local, **kwargs).sample_batch(np.arange(10))
    first = SequenceSampler(EpisodeStore.open(url, storage_options=options), **kwargs)
    all_rows = np.arange(len(first))
    first.sample_batch(all_rows)  # reads every frame once: the cache holds them
    np.testing.assert_array_equal(first.sample_batch(np.arange(10))["obs"]["agentview_image"], want["obs"]["agentview_image"])
    # forked DataLoader workers reopen the remote store (the parent's S3 client is bound to the parent's event loop)
    from torch.utils.data import DataLoader

    from vmp.data import SequenceDataset

    def frames(sampler, workers):
        loader = DataLoader(SequenceDataset(sampler), batch_size=5, num_workers=workers, shuffle=False)
        return np.concatenate([b["obs"]["agentview_image"].numpy() for b in loader])

    for read_first in (True, False):  # opened here (and read from, or not), frames fetched from S3 by the workers
        fresh = SequenceSampler(EpisodeStore.open(upload(fs, local, f"img-{read_first}.zarr"), storage_options=options),
                                **kwargs)
        if read_first:
            fresh.sample_batch(np.arange(2))
        np.testing.assert_array_equal(frames(fresh, 2), frames(SequenceSampler(local, **kwargs), 0))
    assert remote_reader(first) is None  # chunks still come through zarr's cache
    store = EpisodeStore.open(url, storage_options=options)
    assert store.local_path is None and store.prefetch() == store.cache_dir == store.local_path
    prefetched = SequenceSampler(store, **kwargs)
    assert remote_reader(prefetched) is not None  # complete in the cache: frames read straight from its files
    np.testing.assert_array_equal(prefetched.sample_batch(np.arange(10))["obs"]["agentview_image"],
                                  want["obs"]["agentview_image"])
    fs.rm(f"stores/img.zarr/data/agentview_image", recursive=True)  # the remote frames are gone
    again = SequenceSampler(EpisodeStore.open(url, storage_options=options), **kwargs)
    np.testing.assert_array_equal(again.sample_batch(np.arange(10))["obs"]["agentview_image"], want["obs"]["agentview_image"])


def test_appended_store_gets_a_fresh_cache_and_urls_are_read_only(s3, tmp_path, monkeypatch):
    endpoint, fs = s3
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    local = make_store(tmp_path / "grow.zarr", [5, 6]).path
    url = upload(fs, local, "grow.zarr")
    before = EpisodeStore.open(url, storage_options=options)
    assert before.n_episodes == 2
    fs.rm("stores/grow.zarr", recursive=True)
    upload(fs, make_store(tmp_path / "grow2.zarr", [5, 6, 7]).path, "grow.zarr")
    after = EpisodeStore.open(url, storage_options=options)
    assert after.n_episodes == 3 and after.cache_dir != before.cache_dir
    with pytest.raises(ValueError, match="s3://stores/grow.zarr: stores at URLs open read-only"):
        EpisodeStore.open(url, mode="a", storage_options=options)
    with pytest.raises(FileNotFoundError, match="store s3://stores/nope.zarr does not exist"):
        EpisodeStore.open("s3://stores/nope.zarr", storage_options=options)
