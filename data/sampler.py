"""`SequenceSampler`: training windows over an `EpisodeStore` (the training hot path).

Window convention (diffusion_policy's): a window of ``horizon`` steps starts at step t0 of an episode;
its observations are the first ``n_obs_steps`` steps, its actions all ``horizon`` steps. t0 runs from
``-(n_obs_steps - 1)`` to ``L - horizon + n_action_steps - 1``; steps outside [0, L) repeat the episode's
first / last frame (edge padding) and are flagged in ``action_is_pad``.

    t0 ............................ t0 + horizon - 1
    |o o|                                            obs      [n_obs_steps, *shape]
    |a a a a a a a a a a a a a a a a|                action   [horizon, A], train {key: [horizon, *shape]}
       ^   f   f       f                             future   {key: [F, *shape]}, here future_offsets=[2, 4, 8]
       newest obs step t0 + n_obs_steps - 1 (future offsets count from it; text "phase" is read there)

Every item also says whether its episode has actions (``has_action``); an action-free episode's windows have
``action_is_pad`` all True. Future frames past the episode's end repeat its last frame, flagged in
``future_is_pad``. Item layout: see `SequenceSampler`.

The index table is built once; low-dim arrays are cached in memory; an image window is one contiguous read.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr.codecs
import zarr.storage

from .images import resize_frames
from .schema import ACTION_KEY, LANGUAGE_KEY, PHASE_KEY, REASONING_KEY
from .store import LOW_DIM, CorruptChunkError, EpisodeStore, is_url

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")
GOAL_MODES = ("final", "future")
TEXT_KEYS = (PHASE_KEY, REASONING_KEY, LANGUAGE_KEY)


def val_episode_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Seeded episode-level split: bool [n_episodes], True for validation episodes.

    At least one episode goes to validation when ``val_ratio > 0`` and at least one stays in training.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio == 0.0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


class FrameReader:
    """Reads whole frames of a one-frame-per-chunk image array straight from its chunk files.

    zarr's general read path costs ~0.2 ms per call, ~25x the cost of reading and Blosc-decoding one
    84x84 frame, so the hot path reads ``<array>/c.<t>.0.0[.0]`` (stores written before: ``c/<t>/0/0[/0]``)
    itself. Only used for arrays this module can decode exactly (local directory, default chunk keys, bytes + Blosc
    [+ crc32c] codecs, one frame per chunk); `FrameReader.for_array` returns None otherwise and the sampler reads
    through zarr. A chunk's crc32c is checked before it is decoded, as zarr does: a damaged frame raises
    `CorruptChunkError` (named by ``store`` when given), never returns.
    """

    def __init__(self, directory: Path, frame_shape: tuple, dtype: np.dtype, fill_value: Any, separator: str = ".",
                 checksum: bool = False, store: EpisodeStore | None = None, key: str | None = None):
        self.directory, self.frame_shape, self.dtype = directory, frame_shape, np.dtype(dtype)
        self.fill_value, self.separator = fill_value, separator
        self.checksum, self.store, self.key = checksum, store, key
        self.suffix = separator.join(["0"] * len(frame_shape))
        self.frame_bytes = int(np.prod(frame_shape)) * self.dtype.itemsize

    @classmethod
    def for_array(cls, store_path: Path | None, key: str, arr: Any, store: EpisodeStore | None = None
                  ) -> FrameReader | None:
        """``store_path``: the folder holding every file of the store (`EpisodeStore.local_path`), or None;
        ``store``: the store, to name a damaged frame's episode."""
        meta = getattr(arr, "metadata", None)
        if store_path is None or getattr(meta, "zarr_format", None) != 3:
            return None
        codecs, enc = meta.codecs, meta.chunk_key_encoding
        checksum = len(codecs) == 3 and isinstance(codecs[2], zarr.codecs.Crc32cCodec)
        if len(codecs) != 2 + checksum or not isinstance(codecs[0], zarr.codecs.BytesCodec) \
                or not isinstance(codecs[1], zarr.codecs.BloscCodec):
            return None
        endian = codecs[0].endian
        if endian is not None and getattr(endian, "value", endian) != sys.byteorder:
            return None
        if getattr(enc, "name", None) != "default" or getattr(enc, "separator", None) not in (".", "/"):
            return None
        if tuple(arr.chunks) != (1, *arr.shape[1:]):
            return None
        directory = Path(store_path) / "data" / key
        reader = cls(directory, tuple(arr.shape[1:]), np.dtype(arr.dtype), meta.fill_value, enc.separator,
                     checksum, store, key)
        if arr.shape[0] and not os.path.exists(reader._chunk_path(0)):
            return None
        return reader

    def _chunk_path(self, t: int) -> str:
        return f"{self.directory}/c{self.separator}{t}{self.separator}{self.suffix}"

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Frames ``rows`` (1-D int array) -> [len(rows), *frame_shape]."""
        out = np.empty((len(rows), *self.frame_shape), dtype=self.dtype)
        max_bytes = self.frame_bytes + 4096 + 4  # a Blosc frame never exceeds raw size + header; + its crc32c
        for j, t in enumerate(rows.tolist()):
            try:
                fd = os.open(self._chunk_path(t), os.O_RDONLY)
            except FileNotFoundError:  # never-written chunk: zarr's fill value
                out[j] = self.fill_value
                continue
            try:
                raw = os.read(fd, max_bytes)
            finally:
                os.close(fd)
            body = raw[:-4] if self.checksum else raw
            try:
                if self.checksum and google_crc32c.value(body) != int.from_bytes(raw[-4:], "little"):
                    raise ValueError("Stored and computed checksum do not match")
                numcodecs.blosc.decompress(body, out[j])
            except (ValueError, RuntimeError) as e:
                raise self._corrupt(t, e) from e
        return out

    def _corrupt(self, t: int, cause: Exception) -> Exception:
        """The named error for frame ``t`` (the store's, which rereads the chunk through zarr)."""
        if self.store is not None and self.key is not None:
            error = self.store._chunk_error(f"data/{self.key}", self.store._arrays[self.key], [t], cause)
            if error is not None:
                return error
        return CorruptChunkError(f"{self._chunk_path(t)}: frame {t} failed its checksum or could not be decoded "
                                 f"({cause}): the store is corrupted there")


class SequenceSampler:
    """Windows of ``n_obs_steps`` observations and ``horizon`` actions from one split of a store.

    ``sampler[i]`` -> {"obs": {key: [n_obs_steps, *shape]}, "action": [horizon, A] float32,
    "action_is_pad": bool [horizon], "episode": int, "has_action": bool} plus the optional entries below.
    Arrays keep the store's dtypes (images uint8 HWC). ``sample_batch`` stacks the same entries with a leading
    B axis (``has_action`` bool [B], text entries lists of B strings).

    - ``language=True``: obs also holds "language", the episode's instruction (its stored text ``language``).
    - ``goal_keys``: "goal": {key: [*shape]}, the episode's final step or (``goal_mode="future"``) a seeded
      later step.
    - ``future_keys`` + ``future_offsets``: "future": {key: [F, *shape]} at the given step offsets after the
      newest observation step (t0 + n_obs_steps - 1), and "future_is_pad": bool [F], True past the episode's
      last step (whose frame then repeats), for heads that predict future frames.
    - ``train_keys``: "train": {key: [horizon, *shape]}, windowed and padded like the action (same
      ``action_is_pad``): privileged targets that reach the loss but never the policy's inputs.
    - ``text_keys`` (from "phase", "reasoning", "language"): "text": {name: str}; "phase" is the expert phase
      name at the newest observation step (int16 ``phase`` array + store attr ``phase_names``), the others the
      episode's stored text.

    Action-free episodes (`EpisodeStore.has_action` False: video for co-training) give windows with
    ``has_action`` False and ``action_is_pad`` all True, so a padding-masked action loss is exactly zero.

    ``derived`` {key: [n_steps, *shape]}: arrays computed from the store beforehand (a head's `precompute`, e.g.
    image latents), held in memory and sampled like low-dim keys under their own names.

    ``keys`` (the observation keys) default to every store key but the action and the ``train_keys``.
    ``image_sizes`` {key: (H, W)}: camera keys whose frames are resized to that size as they are read (a store
    recorded at the camera's resolution trains at the task's size); their ``shapes`` say the resized size.
    ``split`` is "train", "val" (episodes drawn with ``val_ratio`` and ``seed``) or "all". ``cache_keys``
    also holds those (image) keys in memory; ``fast_reads=False`` forces zarr's reader for images.
    """

    def __init__(
        self,
        store: EpisodeStore | str | os.PathLike,
        keys: list[str] | None = None,
        n_obs_steps: int = 1,
        horizon: int = 1,
        n_action_steps: int = 1,
        val_ratio: float = 0.0,
        seed: int = 0,
        split: str = "train",
        goal_keys: list[str] | None = None,
        goal_mode: str = "final",
        fast_reads: bool = True,
        cache_keys: list[str] | None = None,
        language: bool = False,
        future_keys: list[str] | None = None,
        future_offsets: list[int] | None = None,
        train_keys: list[str] | None = None,
        text_keys: list[str] | None = None,
        derived: dict[str, np.ndarray] | None = None,
        image_sizes: dict[str, tuple[int, int]] | None = None,
    ):
        if not isinstance(store, EpisodeStore):
            store = EpisodeStore.open(store, mode="r")
        _check_window(n_obs_steps, horizon, n_action_steps, split, goal_mode)
        derived = dict(derived or {})
        self._set_keys(store, keys, goal_keys, future_keys, future_offsets, train_keys, text_keys, derived)
        if store.n_episodes == 0:
            raise ValueError(f"store {store.path} has no episodes to sample")

        self.goal_mode, self.language = goal_mode, language
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.pad_before, self.pad_after = n_obs_steps - 1, n_action_steps - 1
        self.split, self.seed, self.val_ratio = split, seed, val_ratio
        self.fast_reads = fast_reads
        self._store: EpisodeStore | None = store
        self._path, self._storage_options = store.path, store.storage_options
        self._set_shapes(store, derived, image_sizes)
        self._choose_episodes(store)
        self._build_index()
        if len(self) == 0:
            raise ValueError(
                f"split {split!r} of store {store.path} yields no windows (episodes in split: {self.episodes.size}, "
                f"val_ratio={val_ratio}, horizon={horizon}); lower horizon or val_ratio")
        self._cache = self._load_cache(store, derived, cache_keys or [])
        self._images: dict[str, Any] | None = None
        self._opened_in = os.getpid()
        self._episode_text = self._load_episode_text(store, self.text_keys, language)
        self._phase, self._phase_names = self._load_phase(store) if PHASE_KEY in self.text_keys else (None, None)
        self._final_goal = {k: self._read_rows(k, self.episode_starts + self.episode_lengths - 1)
                            for k in self.goal_keys} if goal_mode == "final" else {}
        log.info("sampler over %s: split %s, %d episodes (%d action-free), %d windows", self._path, split,
                 self.episodes.size, int((~self.has_action[self.episodes]).sum()), len(self))

    def _set_keys(self, store: EpisodeStore, keys: list[str] | None, goal_keys: list[str] | None,
                  future_keys: list[str] | None, future_offsets: list[int] | None, train_keys: list[str] | None,
                  text_keys: list[str] | None, derived: dict[str, np.ndarray]) -> None:
        """Check every key argument against the store and ``derived`` before anything is read, and keep them."""
        goal_keys, future_keys, train_keys = list(goal_keys or []), list(future_keys or []), list(train_keys or [])
        keys = [k for k in store.keys if k != ACTION_KEY and k not in train_keys] if keys is None else list(keys)
        for k, arr in derived.items():
            if k in store.schema:
                raise ValueError(f"derived key {k!r} is already a key of store {store.path}")
            if np.shape(arr)[:1] != (store.n_steps,):
                raise ValueError(f"derived key {k!r} has {np.shape(arr)[:1]} rows, store {store.path} {store.n_steps} steps")
        for k in [*keys, *goal_keys, *future_keys, *train_keys, ACTION_KEY]:
            if k not in store.schema and k not in derived:
                raise KeyError(f"key {k!r} is not in store {store.path}; keys: {store.keys}")
        self.future_offsets = _future_offsets(future_offsets)
        if bool(future_keys) != bool(self.future_offsets.size):
            raise ValueError(f"future_keys and future_offsets go together (which keys, at which steps), got "
                             f"future_keys={future_keys}, future_offsets={future_offsets}")
        exposed = [k for k in train_keys if k in keys or k in goal_keys or k == ACTION_KEY]
        if exposed:
            raise ValueError(f"train_keys {exposed} are also observation/goal keys or the action; a training-only key "
                             f"must never reach the policy's inputs")
        self.keys, self.goal_keys, self.future_keys, self.train_keys = keys, goal_keys, future_keys, train_keys
        self.text_keys = _text_keys(text_keys)

    def _set_shapes(self, store: EpisodeStore, derived: dict[str, np.ndarray],
                    image_sizes: dict[str, tuple[int, int]] | None) -> None:
        """Kind and per-step shape of every sampled key; a camera key resized by ``image_sizes`` gets its new size,
        so the shapes describe what the sampler returns."""
        sampled = {*self.keys, *self.goal_keys, *self.future_keys, *self.train_keys, ACTION_KEY}
        self.kinds = {k: LOW_DIM if k in derived else store.kind(k) for k in sampled}
        self.shapes = {k: tuple(derived[k].shape[1:]) if k in derived else store.schema[k].shape for k in sampled}
        self.image_keys = [k for k in self.keys if self.kinds[k] != LOW_DIM]
        self.image_sizes = {}
        for k, size in (image_sizes or {}).items():
            if k not in self.kinds or self.kinds[k] == LOW_DIM:
                raise KeyError(f"image_sizes names {k!r}, which is not a sampled camera key of {store.path} "
                               f"(camera keys: {sorted(k for k in self.kinds if self.kinds[k] != LOW_DIM)})")
            size = (int(size[0]), int(size[1]))
            if size != tuple(self.shapes[k][:2]):
                self.image_sizes[k] = size
                self.shapes[k] = (*size, *self.shapes[k][2:])

    def _choose_episodes(self, store: EpisodeStore) -> None:
        """Episode bounds and the seeded train/val split; ``self.episodes`` are the ones this sampler's split uses."""
        ends = store.episode_ends
        self.episode_starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self.episode_lengths = (ends - self.episode_starts).astype(np.int64)
        self.has_action = store.has_action
        val_mask = val_episode_mask(store.n_episodes, self.val_ratio, self.seed)
        self.val_episodes = np.flatnonzero(val_mask)
        self.train_episodes = np.flatnonzero(~val_mask)
        self.episodes = {"train": self.train_episodes, "val": self.val_episodes,
                         "all": np.arange(store.n_episodes)}[self.split]

    def _load_cache(self, store: EpisodeStore, derived: dict[str, np.ndarray], cache_keys: list[str]
                    ) -> dict[str, np.ndarray]:
        """The in-memory arrays: low-dim keys, the action, ``derived`` and any ``cache_keys`` (e.g. the images of a
        small store whose chunks hold many frames), resized as sampled; rows beyond n_steps are uncommitted."""
        for k in cache_keys:
            if k not in self.kinds:
                raise KeyError(f"cache_keys entry {k!r} is not among the sampled keys {sorted(self.kinds)}")
        n = store.n_steps
        cache = {k: derived[k] if k in derived else store.array(k)[:n]
                 for k in self.kinds if self.kinds[k] == LOW_DIM or k in cache_keys}
        for k, size in self.image_sizes.items():
            if k in cache:
                cache[k] = resize_frames(cache[k], size, self.kinds[k])
        return cache

    def _load_episode_text(self, store: EpisodeStore, text_keys: list[str], language: bool) -> dict[str, list[str | None]]:
        """{name: text of every episode} for the per-episode text asked for; each episode of the split must have it."""
        names = [k for k in text_keys if k != PHASE_KEY]
        if language and LANGUAGE_KEY not in names:
            names.append(LANGUAGE_KEY)
        if not names:
            return {}
        stored = [store.episode_text(e) for e in range(store.n_episodes)]
        out = {}
        for name in names:
            texts = [t.get(name) for t in stored]
            missing = [e for e in self.episodes if not texts[e]]
            if missing:
                raise ValueError(f"store {store.path}: {len(missing)} episode(s) of split {self.split!r} have no {name!r} "
                                 f"text (first: episode {int(missing[0])}); {_TEXT_NEED[name]}")
            wrong = [e for e in self.episodes if not isinstance(texts[e], str)]
            if wrong:
                raise ValueError(f"store {store.path}: episode {int(wrong[0])}'s {name!r} text is a "
                                 f"{type(texts[wrong[0]]).__name__}, expected a string")
            out[name] = texts
        return out

    @staticmethod
    def _load_phase(store: EpisodeStore) -> tuple[np.ndarray, np.ndarray]:
        """The phase index of every committed step, int16 [n_steps], and the phase names (object array)."""
        if PHASE_KEY not in store.schema:
            raise KeyError(f"text key {PHASE_KEY!r} needs the store's int16 {PHASE_KEY!r} array, but store {store.path} "
                           f"has none; keys: {store.keys}")
        if not store.phase_names:
            raise KeyError(f"text key {PHASE_KEY!r} needs the store attr 'phase_names' (the name of each phase index), "
                           f"but store {store.path} has none")
        n = store.n_steps
        phase = np.asarray(store.array(PHASE_KEY)[:n]).reshape(n)
        names = np.asarray(store.phase_names, dtype=object)
        if phase.size and (phase.min() < 0 or phase.max() >= names.size):
            raise ValueError(f"store {store.path}: data/{PHASE_KEY} values span [{phase.min()}, {phase.max()}], "
                             f"outside the {names.size} phase_names")
        return phase, names

    # ------------------------------------------------------------------ index
    def _build_index(self) -> None:
        lengths = self.episode_lengths[self.episodes]
        first = -self.pad_before
        last = lengths - self.horizon + self.pad_after  # inclusive
        counts = np.maximum(last - first + 1, 0)
        short = self.episodes[counts == 0]
        if short.size:
            log.warning("%d episode(s) shorter than the window are skipped (first: %d)", short.size, int(short[0]))
        self._win_episode = np.repeat(self.episodes, counts).astype(np.int64)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        self._win_t0 = (first + offsets).astype(np.int64)

    def __len__(self) -> int:
        return int(self._win_episode.size)

    def window(self, i: int) -> tuple[int, int]:
        """(episode, t0) of window ``i``; t0 is relative to the episode start and may be negative (padding)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"window index {i} out of range for a sampler of {len(self)} windows")
        return int(self._win_episode[i]), int(self._win_t0[i])

    def stats_episodes(self, key: str) -> np.ndarray:
        """Episode indices to fit ``key``'s normalisation statistics on (for `Normalizer.from_store`).

        Always the training split, whatever this sampler's split, so validation episodes never shape the
        statistics. For the action and the `train_keys` (padded like it) only training episodes that have
        actions: the zero action rows of action-free episodes are no actions.
        """
        if key not in self.kinds:
            raise KeyError(f"key {key!r} is not sampled by this sampler; sampled keys: {sorted(self.kinds)}")
        episodes = self.train_episodes
        if key == ACTION_KEY or key in self.train_keys:
            episodes = episodes[self.has_action[episodes]]
            if episodes.size == 0:
                raise ValueError(f"no training episode of store {self._path} has actions; cannot fit {key!r} statistics")
        return episodes

    # ------------------------------------------------------------------ reading
    def _arrays(self) -> dict[str, Any]:
        """zarr handles for image keys, reopened after pickling (DataLoader workers)."""
        if self._opened_in != os.getpid() and is_url(self._path):
            # a forked DataLoader worker: a remote store's client (its event loop, its connections) belongs to the
            # parent process and cannot be used here; reopen it
            self._store, self._images = None, None
        if self._images is None:
            if self._store is None:
                self._store = EpisodeStore.open(self._path, mode="r", storage_options=self._storage_options)
            self._opened_in = os.getpid()
            self._images = {}
            for k in self.kinds:
                if k not in self._cache:
                    arr = self._store.array(k)
                    reader = FrameReader.for_array(self._store.local_path, k, arr, self._store) if self.fast_reads else None
                    self._images[k] = reader or arr
        return self._images

    def _read_rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows (absolute step indices, any order) of one key."""
        if key in self._cache:
            return self._cache[key][rows]
        if rows.size == 0:
            return np.empty((*rows.shape, *self.shapes.get(key, self._store_shape(key))), dtype=self._arrays()[key].dtype)
        uniq, inv = np.unique(rows, return_inverse=True)
        arr = self._arrays()[key]
        if isinstance(arr, FrameReader):
            block = arr.read(uniq)
        elif uniq[-1] - uniq[0] + 1 == uniq.size:
            block = arr[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            block = arr.get_orthogonal_selection((uniq,))
        if key in self.image_sizes:
            block = resize_frames(block, self.image_sizes[key], self.kinds[key])
        return block[inv.reshape(rows.shape)]

    def _store_shape(self, key: str) -> tuple:
        arr = self._arrays()[key]
        return arr.frame_shape if isinstance(arr, FrameReader) else tuple(arr.shape[1:])

    def _steps(self, episode: np.ndarray, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute rows [B, horizon] (edge-clipped) and the padding mask [B, horizon] (all True if action-free)."""
        rel = t0[:, None] + np.arange(self.horizon)
        length = self.episode_lengths[episode][:, None]
        is_pad = (rel < 0) | (rel >= length) | ~self.has_action[episode][:, None]
        rows = np.clip(rel, 0, length - 1) + self.episode_starts[episode][:, None]
        return rows, is_pad

    def _future_steps(self, episode: np.ndarray, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute rows [B, F] of the future frames (edge-clipped) and their padding mask [B, F]."""
        rel = (t0 + self.n_obs_steps - 1)[:, None] + self.future_offsets
        length = self.episode_lengths[episode][:, None]
        rows = np.minimum(rel, length - 1) + self.episode_starts[episode][:, None]
        return rows, rel >= length

    def _goal_rows(self, idx: np.ndarray, episode: np.ndarray, t0: np.ndarray) -> np.ndarray:
        length = self.episode_lengths[episode]
        last_obs = np.clip(t0 + self.n_obs_steps - 1, 0, length - 1)
        out = np.empty_like(last_obs)
        for j, (i, lo, L) in enumerate(zip(idx, last_obs, length)):
            rng = np.random.default_rng((self.seed, int(i)))
            out[j] = rng.integers(lo + 1, L) if lo + 1 < L else L - 1
        return out + self.episode_starts[episode]

    def _goal(self, idx: np.ndarray, episode: np.ndarray, t0: np.ndarray) -> dict[str, np.ndarray]:
        if self.goal_mode == "final":
            return {k: v[episode] for k, v in self._final_goal.items()}
        rows = self._goal_rows(idx, episode, t0)
        return {k: self._read_rows(k, rows) for k in self.goal_keys}

    def _text(self, episode: np.ndarray, t0: np.ndarray) -> dict[str, list[str]]:
        """{name: [B strings]}; the phase is the one at each window's newest observation step."""
        out = {}
        for name in self.text_keys:
            if name == PHASE_KEY:
                newest = np.minimum(t0 + self.n_obs_steps - 1, self.episode_lengths[episode] - 1) + self.episode_starts[episode]
                out[name] = self._phase_names[self._phase[newest]].tolist()
            else:
                out[name] = [self._episode_text[name][e] for e in episode]
        return out

    def _extras(self, idx: np.ndarray, episode: np.ndarray, t0: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
        """The optional entries (goal, future, train, text) of windows ``idx``, batched; ``rows`` as from `_steps`."""
        out: dict[str, Any] = {}
        if self.goal_keys:
            out["goal"] = self._goal(idx, episode, t0)
        if self.future_keys:
            future_rows, out["future_is_pad"] = self._future_steps(episode, t0)
            out["future"] = {k: self._read_rows(k, future_rows) for k in self.future_keys}
        if self.train_keys:
            out["train"] = {k: self._read_rows(k, rows) for k in self.train_keys}
        if self.text_keys:
            out["text"] = self._text(episode, t0)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep, t0 = self.window(i)
        episode, t0s = np.array([ep]), np.array([t0])
        rows, is_pad = self._steps(episode, t0s)
        obs_rows = rows[0, : self.n_obs_steps]
        obs = {}
        for k in self.keys:
            if k in self._cache:
                obs[k] = self._cache[k][obs_rows]
            else:  # one contiguous read, then edge padding by index
                lo, hi = int(obs_rows[0]), int(obs_rows[-1]) + 1
                arr = self._arrays()[k]
                block = arr.read(np.arange(lo, hi)) if isinstance(arr, FrameReader) else arr[lo:hi]
                if k in self.image_sizes:
                    block = resize_frames(block, self.image_sizes[k], self.kinds[k])
                obs[k] = block[obs_rows - lo]
        if self.language:
            obs[LANGUAGE_KEY] = self._episode_text[LANGUAGE_KEY][ep]
        item = {"obs": obs, "action": self._cache[ACTION_KEY][rows[0]], "action_is_pad": is_pad[0], "episode": ep,
                "has_action": bool(self.has_action[ep])}
        item.update(_first(self._extras(np.array([i % len(self)]), episode, t0s, rows)))
        return item

    def sample_batch(self, indices: np.ndarray | list[int]) -> dict[str, Any]:
        """Windows ``indices`` stacked: obs {key: [B, n_obs_steps, *shape]}, action [B, horizon, A], ...

        Reads each needed image frame once for the whole batch (`FrameReader`, or one zarr selection).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window indices must be in [0, {len(self)}), got range [{idx.min()}, {idx.max()}]")
        idx = idx % len(self)
        episode, t0 = self._win_episode[idx], self._win_t0[idx]
        rows, is_pad = self._steps(episode, t0)
        obs_rows = rows[:, : self.n_obs_steps]
        batch = {"obs": {k: self._read_rows(k, obs_rows) for k in self.keys},
                 "action": self._cache[ACTION_KEY][rows], "action_is_pad": is_pad, "episode": episode,
                 "has_action": self.has_action[episode]}
        if self.language:
            batch["obs"][LANGUAGE_KEY] = [self._episode_text[LANGUAGE_KEY][e] for e in episode]
        batch.update(self._extras(idx, episode, t0, rows))
        return batch

    def __getstate__(self) -> dict[str, Any]:
        # zarr handles and the store do not cross process boundaries; workers reopen read-only.
        state = self.__dict__.copy()
        state["_store"], state["_images"] = None, None
        return state


# Why a split's episodes must all hold a per-episode text (the end of the error when one lacks it).
_TEXT_NEED = {LANGUAGE_KEY: "a language-conditioned policy needs an instruction per episode",
              REASONING_KEY: "text_keys asks for each window's reasoning"}


def _check_window(n_obs_steps: int, horizon: int, n_action_steps: int, split: str, goal_mode: str) -> None:
    """Reject window settings that leave no valid window layout, before the store is read."""
    if n_obs_steps < 1 or horizon < n_obs_steps:
        raise ValueError(f"need 1 <= n_obs_steps <= horizon, got n_obs_steps={n_obs_steps}, horizon={horizon}")
    if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
        raise ValueError(
            f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1}], got {n_action_steps}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if goal_mode not in GOAL_MODES:
        raise ValueError(f"goal_mode must be one of {GOAL_MODES}, got {goal_mode!r}")


def _future_offsets(offsets: list[int] | None) -> np.ndarray:
    """Validated future step offsets, int64 [F]: positive (steps after the newest observation), strictly increasing."""
    offsets = [] if offsets is None else list(offsets)
    if any(isinstance(o, (bool, np.bool_)) or not isinstance(o, (int, np.integer)) or o < 1 for o in offsets):
        raise ValueError(f"future_offsets must be positive ints (steps after the newest observation), got {offsets}")
    out = np.asarray(offsets, dtype=np.int64)
    if (np.diff(out) <= 0).any():
        raise ValueError(f"future_offsets must be strictly increasing, got {offsets}")
    return out


def _text_keys(text_keys: list[str] | None) -> list[str]:
    text_keys = list(text_keys or [])
    unknown = [k for k in text_keys if k not in TEXT_KEYS]
    if unknown:
        raise ValueError(f"text_keys {unknown} are not supported; supported: {list(TEXT_KEYS)}")
    if len(set(text_keys)) != len(text_keys):
        raise ValueError(f"text_keys must not repeat a name, got {text_keys}")
    return text_keys


def _first(tree: Any) -> Any:
    """Element 0 of every array/list in a (nested dict) batch: one window's entries."""
    if isinstance(tree, dict):
        return {k: _first(v) for k, v in tree.items()}
    return tree[0]
