"""`EpisodeStore`: the zarr demonstration store shared by collection, training and deployment recording.

Layout (one zarr v3 group)::

    <store>/data/<key>            [n_steps, *shape]  time-major, all episodes back to back
    <store>/meta/episode_ends     [n_episodes] int64 cumulative end index of each episode
    <store>/meta/has_action       [n_episodes] bool, False for action-free episodes (video without actions, whose
                                  data/action rows are zeros that no reader takes for actions); a store without
                                  it (written before action-free episodes existed) has actions in every episode
    <store>/meta/episode_text/b<k> groups whose attrs map "<episode index>" -> {"language": ..., ...} for
                                  episodes k*256 ... k*256+255 (blocks keep each rewrite small)
    <store>/.append.lock          flock held by the one process appending
    root attrs: vmp_schema_version, task, control_hz, schema {key: {shape, dtype, meaning}}, [phase_names], ...

Crash safety: an append writes the new rows beyond the committed end, then its text and its ``meta/has_action``
entry, then commits by writing ``meta/episode_ends`` last. zarr writes every file atomically (temp file + rename),
so after a kill the store holds every committed episode; rows, text and flags beyond ``episode_ends[-1]`` are
ignored by readers and overwritten by the next append. A torn commit (episode_ends resized but its new value not
yet written) reads as a non-increasing tail, which is ignored as well.

Checksums: every chunk of a store created by this vmp ends in its crc32c (zarr's ``crc32c`` codec after the
compressor), so a flipped bit fails the read instead of being trained on. Reads through `EpisodeStore` raise
`CorruptChunkError` naming the array, chunk, episodes and store; `EpisodeStore.corrupt_chunks` checks them all
(``vmp-data validate --deep``). Stores written before have no checksums and still read; arrays an append creates
later (``meta/has_action``) get one.

diffusion_policy replay buffers (zarr v2, ``data/<key>`` + ``meta/episode_ends``, no schema attrs) open
read-only; their schema is inferred from array shapes and dtypes and reported in ``inferred``.

Stores at fsspec URLs (``s3://``, ``gs://``, ``https://``, ...) open read-only through zarr's ``FsspecStore`` behind
its ``CacheStore``: every file read once is kept in a local zarr store under ``$VMP_CACHE/stores`` (default
``~/.cache/vmp/stores``), so later epochs and runs read the local copy. The cache folder is named by a fingerprint of
the URL and the store's root and ``episode_ends`` metadata, which every append changes: an appended store gets a
fresh cache rather than stale chunks. A cache folder may be deleted at any time.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage

from .schema import ACTION_KEY, DEPTH, LOW_DIM, RGB, SCHEMA_VERSION, KeySpec, check_episode, check_schema, key_kind

log = logging.getLogger(__name__)

# Storage layout constants (not hyperparameters): one image per chunk, low-dim in long chunks.
LOWDIM_CHUNK_STEPS = 10_000
LOWDIM_CHUNK_BYTES = 4 << 20
EPISODE_ENDS_CHUNK = 10_000
IMAGE_CODEC = dict(cname="zstd", clevel=3, shuffle="shuffle")
LOWDIM_CODEC = dict(cname="zstd", clevel=5, shuffle="shuffle")
LOCK_NAME = ".append.lock"
REQUIRED_ATTRS = ("task", "control_hz")
TEXT_BLOCK = 256  # episodes per episode_text attrs group
HAS_ACTION = "has_action"  # meta array of per-episode action flags


def _compressors(codec: dict) -> list:
    """Blosc, then the chunk's crc32c: zarr checks it before decompressing, so corrupted bytes never decode."""
    return [zarr.codecs.BloscCodec(**codec), zarr.codecs.Crc32cCodec()]


# What reading a damaged chunk raises in zarr: ValueError("Stored and computed checksum do not match ...") from the
# crc32c codec, RuntimeError("error during blosc decompression") from a store without checksums.
DECODE_ERRORS = (ValueError, RuntimeError)


def _is_damage(e: Exception) -> bool:
    """A read error that says the chunk's bytes are bad (not, e.g., a bad selection)."""
    return isinstance(e, RuntimeError) or "checksum" in str(e)


class CorruptChunkError(ValueError):
    """A chunk whose bytes are not those written (crc32c mismatch, or undecodable): raised instead of returning them.

    ``key`` the array ("data/action"), ``chunks`` the bad chunk indices, ``episodes`` the episodes they hold."""

    def __init__(self, message: str, key: str | None = None, chunks: list[int] = (), episodes: list[int] = ()):
        super().__init__(message)
        self.key, self.chunks, self.episodes = key, list(chunks), list(episodes)

    def __reduce__(self):  # keeps the fields across processes
        return type(self), (self.args[0], self.key, self.chunks, self.episodes)


def has_checksum(arr: Any) -> bool:
    """Whether ``arr``'s chunks carry a crc32c (zarr v3 ``crc32c`` codec)."""
    codecs = getattr(getattr(arr, "metadata", None), "codecs", None) or ()
    return any(isinstance(c, zarr.codecs.Crc32cCodec) for c in codecs)


class CheckedArray:
    """A store array whose reads raise `CorruptChunkError` (naming array, chunk, episodes, store) when a chunk is
    damaged, where zarr's own error names none of them; every other attribute is the zarr array's."""

    def __init__(self, store: EpisodeStore, name: str, arr: zarr.Array):
        self._store, self._name, self._arr = store, name, arr

    def __getattr__(self, attr: str) -> Any:
        if "_arr" not in self.__dict__:  # half-built (copy, pickle): no zarr array to defer to
            raise AttributeError(attr)
        value = getattr(self._arr, attr)
        if attr.startswith("get_") and attr.endswith("_selection"):
            return functools.partial(self._read, value)
        return value

    def __getitem__(self, selection: Any) -> Any:
        return self._read(self._arr.__getitem__, selection)

    def __setitem__(self, selection: Any, value: Any) -> None:
        self._arr[selection] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return len(self._arr)

    def __repr__(self) -> str:
        return f"CheckedArray({self._name!r}, {self._arr!r})"

    def _read(self, read: Any, selection: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return read(selection, *args, **kwargs)
        except DECODE_ERRORS as e:
            if not _is_damage(e):
                raise
            error = self._store._chunk_error(self._name, self._arr, _selected_chunks(self._arr, selection), e)
            if error is None:  # no chunk fails on its own: not corruption (e.g. a bad selection)
                raise
            raise error from e


def _selected_chunks(arr: zarr.Array, selection: Any) -> list[int]:
    """Indices of the first-axis chunks a selection touches (all of them when it cannot tell)."""
    n, size = int(arr.shape[0]), int(arr.chunks[0])
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    try:
        if isinstance(first, slice):
            start, stop, _ = first.indices(n)
            return list(range(start // size, (max(stop, start + 1) - 1) // size + 1)) if stop > start else []
        rows = np.asarray(first)
        if rows.dtype.kind in "iu":
            return np.unique((rows.reshape(-1) % max(n, 1)) // size).tolist()
    except (TypeError, ValueError):
        pass
    return list(range(-(-n // size)))


def _span(episodes: range) -> str:
    if not episodes:
        return "no committed episode"
    return f"episode {episodes[0]}" if len(episodes) == 1 else f"episodes {episodes[0]}-{episodes[-1]}"


class StoreLockedError(RuntimeError):
    """Raised when a second writer tries to append to a store that is already open for appending."""


class SchemaVersionError(ValueError):
    """Raised when a store was written by a newer vmp than this one."""


class _AppendLock:
    """Non-blocking exclusive flock on ``<store>/.append.lock``; the file holds the holder's pid."""

    def __init__(self, store_path: Path):
        self.path = store_path / LOCK_NAME
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(self.fd)
                self.fd = None
            raise StoreLockedError(
                f"store {store_path} is already open for appending by another writer (pid {holder}); "
                "concurrent appends would interleave episodes, so close the other writer first"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _committed_count(ends: np.ndarray, data_len: int) -> int:
    """Number of leading episode_ends entries that form a valid commit (strictly increasing, within data)."""
    if ends.size == 0:
        return 0
    prev = np.concatenate([[0], ends[:-1]])
    bad = (ends <= prev) | (ends > data_len)
    return int(np.argmax(bad)) if bad.any() else int(ends.size)


def _infer_spec(key: str, arr: zarr.Array) -> tuple[KeySpec, str]:
    shape, dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype).name
    probe = KeySpec(shape, dtype)
    kind = key_kind(key, probe)
    if kind == RGB:
        meaning = f"inferred: image HWC {dtype}" + (" (values 0-255)" if dtype.startswith("float") else "")
    elif key == ACTION_KEY:
        meaning = f"inferred: action {dtype} {list(shape)}"
    else:
        meaning = f"inferred: {kind} {dtype} {list(shape)}"
    return KeySpec(shape, dtype, meaning), kind


def _file_stem(path: Path | str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1].split(".")[0]


def is_url(path: str | os.PathLike) -> bool:
    """A store location fsspec resolves (``s3://bucket/x.zarr``) rather than a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def store_cache_root() -> Path:
    return Path(os.environ.get("VMP_CACHE") or Path.home() / ".cache" / "vmp") / "stores"


def _open_remote(url: str, storage_options: Mapping[str, Any] | None) -> tuple[zarr.abc.store.Store, Path]:
    """A read-only zarr store for ``url`` with a local chunk cache; -> (store, its cache folder)."""
    import hashlib

    import fsspec
    from zarr.experimental.cache_store import CacheStore

    options = dict(storage_options or {})
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise ImportError(f"store {url}: fsspec cannot open this URL ({e}); install its file system package "
                          f"(s3fs for s3://, gcsfs for gs://)") from e
    digest = hashlib.sha256(url.encode())
    found = False
    for meta in ("zarr.json", "meta/episode_ends/zarr.json", ".zattrs", ".zgroup", "meta/episode_ends/.zarray"):
        try:
            digest.update(meta.encode() + fs.cat_file(f"{root.rstrip('/')}/{meta}"))
            found = True
        except FileNotFoundError:
            continue
    if not found:
        raise FileNotFoundError(f"store {url} does not exist (no zarr.json or .zgroup there)")
    cache_dir = store_cache_root() / digest.hexdigest()[:20]
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "SOURCE").write_text(url + "\n")
    remote = zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=True)
    return CacheStore(remote, cache_store=zarr.storage.LocalStore(cache_dir)), cache_dir


COMPLETE = "COMPLETE"  # marker in a remote store's cache folder: every file of the store is there


class EpisodeStore:
    """A store of demonstration episodes; open read-only (default) or for appending (``mode="a"``).

    ``path`` is a local Path, or the URL string of a remote store (``storage_options`` then holds what fsspec was
    given to open it: credentials, endpoint; ``cache_dir`` its local chunk cache)."""

    storage_options: dict[str, Any] | None = None
    cache_dir: Path | None = None

    def __init__(self, root: zarr.Group, path: Path | str, mode: str, lock: _AppendLock | None = None):
        self._root, self.path, self.mode, self._lock = root, path, mode, lock
        self.inferred: list[str] = []
        root_attrs = dict(root.attrs)
        version = root_attrs.get("vmp_schema_version")
        self.legacy = version is None
        if not self.legacy:
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"store {path} has vmp_schema_version {version!r}, newer than this vmp supports "
                    f"({SCHEMA_VERSION}); upgrade vmp to read it"
                )
            if "schema" not in root_attrs:
                raise KeyError(f"store {path}: root attrs lack 'schema' (expected {{key: {{shape, dtype, meaning}}}})")
        for needed in ("data", "meta"):
            if needed not in root:
                raise ValueError(f"{path} is not an episode store: it has no '{needed}' group (expected data/<key> and meta/episode_ends)")
        if "episode_ends" not in root["meta"]:
            raise ValueError(f"{path} is not an episode store: it has no 'meta/episode_ends' array")
        self._data: zarr.Group = root["data"]
        self._meta: zarr.Group = root["meta"]
        if self.legacy:
            self._schema, self._kinds = self._infer_schema(root_attrs)
            self._attrs = {**root_attrs, "vmp_schema_version": 0, "task": root_attrs.get("task", _file_stem(path)),
                           "control_hz": root_attrs.get("control_hz"),
                           "schema": {k: s.to_json() for k, s in self._schema.items()}}
        else:
            self._schema = {k: KeySpec.from_json(k, v) for k, v in root_attrs["schema"].items()}
            self._kinds = {k: key_kind(k, s) for k, s in self._schema.items()}
            self._attrs = root_attrs
            for k in self._schema:
                if k not in self._data:
                    raise KeyError(f"store {path}: schema lists key {k!r} but data/{k} is missing")
        self._arrays: dict[str, zarr.Array] = {k: self._data[k] for k in self._schema}
        self._ends_array: zarr.Array = self._meta["episode_ends"]
        self._load_ends()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, path: str | os.PathLike, schema: Mapping[str, KeySpec], attrs: Mapping[str, Any],
               overwrite: bool = False) -> EpisodeStore:
        """Create an empty store and return it open for appending (holding the append lock)."""
        path = Path(path)
        attrs = dict(attrs)
        missing = [a for a in REQUIRED_ATTRS if a not in attrs]
        if missing:
            raise KeyError(f"attrs for new store {path} lack {missing}; expected at least {list(REQUIRED_ATTRS)}")
        reserved = [a for a in ("vmp_schema_version", "schema") if a in attrs]
        if reserved:
            raise ValueError(f"attrs {reserved} are written by EpisodeStore itself; do not pass them")
        schema = check_schema(schema, attrs)
        try:
            json.dumps(attrs)
        except TypeError as e:
            raise ValueError(f"attrs for new store {path} must be JSON-serializable: {e}") from e
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            if path.is_dir():
                _AppendLock(path).release()  # refuses to delete a store another process is appending to
                shutil.rmtree(path)
            else:
                path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        lock = _AppendLock(path)
        try:
            root = zarr.open_group(zarr.storage.LocalStore(path), mode="a", zarr_format=3)
            root.attrs.update({"vmp_schema_version": SCHEMA_VERSION, **attrs,
                               "schema": {k: s.to_json() for k, s in schema.items()}})
            data = root.create_group("data")
            meta = root.create_group("meta")
            for key, spec in schema.items():
                kind = key_kind(key, spec)
                # One frame per chunk, named c.<t>.0.0.0 in one folder: with zarr's default "/" every frame made
                # three nested folders, whose disk blocks took twice the frames' own compressed bytes.
                keys = {"name": "default", "separator": "."}
                if kind in (RGB, DEPTH):
                    chunks, codec = (1, *spec.shape), IMAGE_CODEC
                else:
                    row = max(1, int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize)
                    chunks, codec = (max(1, min(LOWDIM_CHUNK_STEPS, LOWDIM_CHUNK_BYTES // row)), *spec.shape), LOWDIM_CODEC
                data.create_array(key, shape=(0, *spec.shape), dtype=spec.dtype, chunks=chunks,
                                  compressors=_compressors(codec), fill_value=0, chunk_key_encoding=keys)
            meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(EPISODE_ENDS_CHUNK,),
                              compressors=_compressors(LOWDIM_CODEC), fill_value=0)
            meta.create_group("episode_text")
            log.info("created store %s with keys %s", path, list(schema))
            return cls(root, path, "a", lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, schema: Mapping[str, KeySpec], attrs: Mapping[str, Any],
                       same_attrs: tuple[str, ...] = ()) -> EpisodeStore:
        """The store at ``path`` open for appending, created when there is none. An existing one must hold exactly
        ``schema``'s keys, each with its shape and dtype, and the values of ``attrs`` named in ``same_attrs``;
        otherwise it is refused (closed, untouched) with every difference named. The one way `vmp-collect`,
        `vmp-record` and `vmp-deploy`'s recorder continue a store."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            return cls.create(path, schema, attrs)
        store = cls.open(path, mode="a")  # repairs what a killed append left behind
        theirs = {k: (tuple(s.shape), np.dtype(s.dtype).name) for k, s in store.schema.items()}
        ours = {k: (tuple(s.shape), np.dtype(s.dtype).name) for k, s in schema.items()}
        differ = [f"key {k!r}: the store has {theirs.get(k, 'none')}, this run writes {ours.get(k, 'none')}"
                  for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        differ += [f"attribute {a!r}: the store has {store.attrs.get(a)!r}, this run {attrs.get(a)!r}"
                   for a in same_attrs if store.attrs.get(a) != attrs.get(a)]
        if differ:
            store.close()
            raise ValueError(f"{path} holds other data than this run writes ({'; '.join(differ)}); write to a new "
                             f"store instead")
        log.info("appending to %s (%d episodes there)", path, store.n_episodes)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", storage_options: Mapping[str, Any] | None = None
             ) -> EpisodeStore:
        """Open an existing store: ``"r"`` read-only (default, no lock) or ``"a"`` to append (takes the lock).

        Also opens diffusion_policy replay buffers (zarr v2 directories or ``.zarr.zip`` files) read-only, and stores
        at fsspec URLs read-only with a local chunk cache (``storage_options``: fsspec's, e.g. credentials or
        ``{"client_kwargs": {"endpoint_url": ...}}`` for an S3-compatible server).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if is_url(path):
            if mode != "r":
                raise ValueError(f"store {path}: stores at URLs open read-only (append to a local store, then upload it)")
            zstore, cache_dir = _open_remote(str(path), storage_options)
            try:
                root = zarr.open_group(zstore, mode="r")
            except (zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
                raise ValueError(f"{path} is not a zarr store (no zarr group metadata found): {e}") from e
            store = cls(root, str(path), "r")
            store.storage_options, store.cache_dir = dict(storage_options or {}), cache_dir
            return store
        path = Path(str(path).removeprefix("file://"))
        if not path.exists():
            raise FileNotFoundError(f"store {path} does not exist")
        if path.is_file():
            if not str(path).endswith(".zip"):
                raise ValueError(f"{path} is a file, not a zarr store (expected a directory or a .zarr.zip)")
            if mode != "r":
                raise ValueError(f"{path}: zip stores open read-only")
            zstore: zarr.abc.store.Store = zarr.storage.ZipStore(path, mode="r")
        else:
            zstore = zarr.storage.LocalStore(path, read_only=True)
        try:
            root = zarr.open_group(zstore, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
            raise ValueError(f"{path} is not a zarr store (no zarr group metadata found): {e}") from e
        if mode == "r":
            return cls(root, path, mode)
        if "vmp_schema_version" not in root.attrs:
            # Checked before taking the lock: a foreign store is left untouched.
            raise ValueError(f"{path} has no vmp_schema_version attr (a diffusion_policy replay buffer?); "
                             "such stores open read-only (mode='r')")
        lock = _AppendLock(path)
        try:
            root = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
            store = cls(root, path, mode, lock)
            store._repair()
            return store
        except BaseException:
            lock.release()
            raise

    @property
    def local_path(self) -> Path | None:
        """Where every file of this store lies on this machine: its own folder, or a remote store's cache once
        `prefetch` completed it (readers may then bypass zarr for speed); None while chunks are still remote."""
        if self.cache_dir is None:
            return self.path if isinstance(self.path, Path) and self.path.is_dir() else None
        return self.cache_dir if (self.cache_dir / COMPLETE).exists() else None

    def prefetch(self) -> Path | None:
        """Download every file of a remote store into its cache at once (many requests in flight), so that training
        never waits on the network; files already cached are kept. Each file lands by rename (a crash leaves no
        partial chunk). -> the cache folder; None for a local store."""
        import tempfile

        import fsspec

        if self.cache_dir is None:
            return None
        if (self.cache_dir / COMPLETE).exists():
            return self.cache_dir
        fs, root = fsspec.core.url_to_fs(str(self.path), **(self.storage_options or {}))
        root = root.rstrip("/")
        remote = [f for f in fs.find(root) if not (self.cache_dir / f[len(root) + 1:]).exists()]
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as tmp:
            local = [os.path.join(tmp, f[len(root) + 1:]) for f in remote]
            for parent in {os.path.dirname(x) for x in local}:
                os.makedirs(parent, exist_ok=True)
            if remote:
                fs.get(remote, local)
            for f, x in zip(remote, local):
                dest = self.cache_dir / f[len(root) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(x, dest)
        (self.cache_dir / COMPLETE).write_text(f"{len(remote)} files fetched\n")
        log.info("prefetched %s into %s (%d files)", self.path, self.cache_dir, len(remote))
        return self.cache_dir

    # ------------------------------------------------------------------ properties
    @property
    def schema(self) -> dict[str, KeySpec]:
        return dict(self._schema)

    @property
    def keys(self) -> list[str]:
        return list(self._schema)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        """Committed cumulative episode ends, int64 [n_episodes]."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        return int(self._ends.size)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    @property
    def has_action(self) -> np.ndarray:
        """bool [n_episodes]: False for action-free episodes, whose ``action`` rows are zeros, not actions."""
        return self._has_action.copy()

    @property
    def phase_names(self) -> list[str] | None:
        return self._attrs.get("phase_names")

    def kind(self, key: str) -> str:
        """``rgb``, ``depth`` or ``low_dim``."""
        self._check_key(key)
        return self._kinds[key]

    def array(self, key: str) -> CheckedArray:
        """The zarr array of ``key`` (rows beyond ``n_steps`` are uncommitted: ignore them); a damaged chunk raises
        `CorruptChunkError` instead of zarr's bare error."""
        self._check_key(key)
        return CheckedArray(self, f"data/{key}", self._arrays[key])

    def unchecksummed(self) -> list[str]:
        """Arrays ("data/<key>", "meta/<name>") whose chunks carry no crc32c (stores written before checksums):
        a flipped bit there reads back as data."""
        arrays = {f"data/{k}": a for k, a in self._arrays.items()}
        arrays.update({f"meta/{n}": a for n, a in sorted(self._meta.arrays())})
        return [name for name, a in arrays.items() if not has_checksum(a)]

    def corrupt_chunks(self, block_bytes: int = 64 << 20) -> list[CorruptChunkError]:
        """Read every chunk of every array (data: the committed rows; meta: all) and return one error per damaged
        chunk. Reads ~``block_bytes`` at a time and looks at single chunks only in a block that fails."""
        arrays = [(f"data/{k}", a, self.n_steps) for k, a in self._arrays.items()]
        arrays += [(f"meta/{n}", a, a.shape[0]) for n, a in sorted(self._meta.arrays())]
        found = []
        for name, arr, rows in arrays:
            size = int(arr.chunks[0])
            row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
            step = max(1, block_bytes // (row_bytes * size)) * size
            for lo in range(0, rows, step):
                try:
                    arr[lo:min(lo + step, rows)]
                except DECODE_ERRORS as e:
                    for c in range(lo // size, (min(lo + step, rows) - 1) // size + 1):
                        error = self._chunk_error(name, arr, [c], e, hint=False)
                        if error is not None:
                            found.append(error)
        return found

    # ------------------------------------------------------------------ reading
    def episode_slice(self, i: int) -> slice:
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for store {self.path} with {n} episodes")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as {key: [T, *shape]}."""
        sl = self.episode_slice(i)
        keys = self.keys if keys is None else keys
        for k in keys:
            self._check_key(k)
        return {k: self.array(k)[sl] for k in keys}

    def episode_text(self, i: int) -> dict[str, Any]:
        """Per-episode text (e.g. ``{"language": "lift the cube"}``); ``{}`` when none was stored."""
        sl = self.episode_slice(i)  # noqa: F841 - bounds check
        i %= self.n_episodes
        group = self._text_group(i, create=False)
        return dict(group.attrs.get(str(i), {})) if group is not None else {}

    # ------------------------------------------------------------------ writing
    def append_episode(self, episode: Mapping[str, np.ndarray], text: Mapping[str, Any] | None = None,
                       action_free: bool = False) -> int:
        """Validate and append one episode ({key: [T, *shape]}); returns its index. Crash-safe, see module doc.

        ``action_free=True`` appends video without actions (for co-training): ``episode`` omits ``action``, its
        action rows are written as zeros and `has_action` marks it, so samplers pad out its actions.
        """
        if self.mode != "a":
            state = "closed" if self.mode == "closed" else "open read-only"
            raise PermissionError(f"store {self.path} is {state}; open it with mode='a' to append")
        arrays = check_episode(episode, self._schema, self.phase_names, action_free=bool(action_free))
        if text is not None:
            if not isinstance(text, Mapping):
                raise TypeError(f"text must be a dict (e.g. {{'language': ...}}), got {type(text).__name__}")
            try:
                text = json.loads(json.dumps(dict(text)))
            except TypeError as e:
                raise ValueError(f"episode text must be JSON-serializable: {e}") from e
        start, n = self.n_steps, self.n_episodes
        length = next(iter(arrays.values())).shape[0]
        stop = start + length
        writing = "data"
        try:
            for key, arr in arrays.items():
                writing = f"data/{key}"
                z = self._arrays[key]
                if z.shape[0] != stop:
                    z.resize((stop, *z.shape[1:]))
                z[start:stop] = arr
            writing = "meta/episode_text"
            group = self._text_group(n, create=bool(text))
            if text:
                group.attrs[str(n)] = text
            elif group is not None and str(n) in group.attrs:  # stale text of an interrupted append
                del group.attrs[str(n)]
            writing = f"meta/{HAS_ACTION}"
            flags = self._has_action_array()
            if flags.shape[0] != n + 1:
                flags.resize((n + 1,))
            flags[n] = not action_free  # always written: overwrites the flag of an interrupted append
            # Commit: the episode exists once episode_ends holds its end.
            writing = "meta/episode_ends"
            self._ends_array.resize((n + 1,))
            self._ends_array[n] = stop
        except OSError as err:  # a full disk (ENOSPC), a quota: zarr's own error names neither store nor file
            if err.errno is None:
                raise
            raise OSError(err.errno, f"store {self.path}: could not append episode {n} ({length} steps), writing "
                                     f"{self.path / writing}: {err.strerror or err}; the {n} episode(s) before it "
                                     f"are intact (the next append overwrites what this one left)") from err
        self._ends = np.append(self._ends, np.int64(stop))
        self._has_action = np.append(self._has_action, not action_free)
        return n

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.mode = "closed" if self.mode == "a" else self.mode

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys})"

    # ------------------------------------------------------------------ internals
    def _check_key(self, key: str) -> None:
        if key not in self._schema:
            raise KeyError(f"key {key!r} is not in store {self.path}; keys: {self.keys}")

    def _text_group(self, i: int, create: bool) -> zarr.Group | None:
        if self.legacy or "episode_text" not in self._meta:
            return None
        parent = self._meta["episode_text"]
        name = f"b{i // TEXT_BLOCK}"
        if name in parent:
            return parent[name]
        return parent.create_group(name) if create else None

    def _has_action_array(self) -> zarr.Array:
        """``meta/has_action``, created on the first append to a store that predates it (all True so far)."""
        if HAS_ACTION not in self._meta:  # fill_value True: the committed episodes all have actions
            return self._meta.create_array(HAS_ACTION, shape=(self.n_episodes,), dtype="bool", chunks=(EPISODE_ENDS_CHUNK,),
                                           compressors=_compressors(LOWDIM_CODEC), fill_value=True)
        return self._meta[HAS_ACTION]

    def _chunk_error(self, name: str, arr: zarr.Array, chunks: list[int], cause: Exception, hint: bool = True
                     ) -> CorruptChunkError | None:
        """The error for the first of ``chunks`` (first-axis chunk indices of array ``name``) that fails to read on
        its own, naming the episodes it holds; None when none fails. ``hint``: point to ``validate --deep``."""
        size, n = int(arr.chunks[0]), int(arr.shape[0])
        bad = []
        for c in chunks:
            try:
                arr[c * size:min((c + 1) * size, n)]
            except DECODE_ERRORS as e:
                if _is_damage(e):
                    bad.append((c, e))
        if not bad:
            return None
        c, e = bad[0]
        lo, hi = c * size, min((c + 1) * size, n)
        if name.startswith("meta/"):  # a meta array holds one entry per episode
            episodes, where = range(lo, hi), f"entries {lo}-{hi - 1}"
        else:
            ends = getattr(self, "_ends", np.zeros(0, np.int64))
            first = int(np.searchsorted(ends, lo, side="right"))
            episodes = range(first, min(int(np.searchsorted(ends, hi - 1, side="right")) + 1, ends.size))
            where = f"steps {lo}-{hi - 1}"
        what = "failed its checksum" if "checksum" in str(e) else f"could not be decoded ({type(e).__name__}: {e})"
        more = f" ({len(bad) - 1} more damaged chunk(s) in this read)" if len(bad) > 1 else ""
        if name.startswith("meta/"):
            fix = "the store's episode index is damaged; restore the store from a copy"
        elif episodes:
            fix = f"re-collect {_span(episodes)} or leave {'it' if len(episodes) == 1 else 'them'} out of the store"
        else:
            fix = "these rows are uncommitted (an interrupted append) and the next append overwrites them"
        cache = (f"; if only the local cache copy is damaged, deleting {self.cache_dir} fetches it again"
                 if self.cache_dir is not None else "")
        message = (f"{self.path}: {name} chunk {c} ({where}, {_span(episodes)}) {what}{more}: the store is corrupted "
                   f"there, so its data is not returned; {fix}{cache}"
                   + (f". `vmp-data validate {self.path} --deep` lists every damaged chunk" if hint else ""))
        return CorruptChunkError(message, name, [b for b, _ in bad], list(episodes))

    def _load_ends(self) -> None:
        raw = np.asarray(CheckedArray(self, "meta/episode_ends", self._ends_array)[:], dtype=np.int64)
        data_len = min((a.shape[0] for a in self._arrays.values()), default=0)
        n = _committed_count(raw, data_len)
        if n < raw.size:
            log.warning("store %s: ignoring %d uncommitted episode_ends entr%s (interrupted append)",
                        self.path, raw.size - n, "y" if raw.size - n == 1 else "ies")
        self._raw_ends_size = int(raw.size)
        self._ends = raw[:n].copy()
        # Entries missing at the end can only come from a writer that predates action-free episodes.
        self._has_action = np.ones(n, dtype=bool)
        if HAS_ACTION in self._meta:
            flags = np.asarray(CheckedArray(self, f"meta/{HAS_ACTION}", self._meta[HAS_ACTION])[:n], dtype=bool)
            self._has_action[:flags.size] = flags

    def _repair(self) -> None:
        """Drop a torn commit and stray temp files left by a killed writer (called with the lock held)."""
        n = self.n_episodes
        if self._raw_ends_size > n:
            self._ends_array[n:self._raw_ends_size] = 0
            self._ends_array.resize((n,))
            log.warning("store %s: removed a torn episode commit", self.path)
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)

    def _infer_schema(self, root_attrs: dict) -> tuple[dict[str, KeySpec], dict[str, str]]:
        schema, kinds = {}, {}
        for key, arr in sorted(self._data.arrays()):
            spec, kind = _infer_spec(key, arr)
            schema[key], kinds[key] = spec, kind
            self.inferred.append(f"schema[{key!r}] inferred as {kind} {spec.dtype} {list(spec.shape)}")
        if ACTION_KEY not in schema:
            raise ValueError(f"{self.path}: diffusion_policy store has no data/action array; keys {sorted(schema)}")
        if "task" not in root_attrs:
            self.inferred.append(f"task inferred from the file name as {_file_stem(self.path)!r}")
        if "control_hz" not in root_attrs:
            self.inferred.append("control_hz unknown (not stored)")
        return schema, kinds


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes on disk under ``path`` (a directory store or a zip file; 0 for a URL: nothing of it is on this disk)."""
    if is_url(path):
        return 0
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


__all__ = ["EpisodeStore", "StoreLockedError", "SchemaVersionError", "CorruptChunkError", "CheckedArray", "has_checksum",
           "disk_usage", "is_url", "RGB", "DEPTH", "LOW_DIM"]
