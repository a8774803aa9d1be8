"""`vmp-data`: inspect, validate and import demonstration stores.

    vmp-data info PATH                 episodes (and how many are action-free), steps, keys, action statistics,
                                       size and compression
    vmp-data validate PATH [--deep]    structural checks; exit code 1 with the problems listed; --deep also reads
                                       every chunk and names each one that fails its checksum (array, episodes)
    vmp-data import-robomimic IN OUT   robomimic HDF5 -> store
    vmp-data import-lerobot IN OUT     LeRobot dataset -> store (needs `pip install vmp[lerobot]`)
    vmp-data task --from-store STORE   write the task config vmp-train reads (shape_meta, control rate, episode
                                       length, key meanings) from the store's own schema:
                                       vmp_configs/task/<name>.yaml, trained with
                                       vmp-train --config-dir vmp_configs task=<name> ...
    vmp-data view STORE [--episode N] [--save FILE.rrd]
                                       watch episodes in Rerun (camera frames, state/action plots, episode text;
                                       the first 5 unless --episode N); also a vmp-eval output folder's rollouts;
                                       --save writes a recording instead of opening the viewer
                                       (needs `pip install vmp[viewer]`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .schema import ACTION_KEY, DEPTH, LANGUAGE_KEY, LOW_DIM, PHASE_KEY, RGB, SCHEMA_VERSION
from .store import CorruptChunkError, EpisodeStore, _committed_count, disk_usage

log = logging.getLogger(__name__)


def store_info(store: EpisodeStore) -> dict[str, Any]:
    """Summary of a store as a JSON-able dict (what `vmp-data info` prints)."""
    lengths = store.episode_lengths
    keys = {}
    raw_bytes = 0
    for k, spec in store.schema.items():
        nbytes = store.n_steps * int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        raw_bytes += nbytes
        keys[k] = {"shape": list(spec.shape), "dtype": spec.dtype, "kind": store.kind(k), "meaning": spec.meaning}
    info: dict[str, Any] = {
        "path": str(store.path),
        "format": "diffusion_policy replay buffer (zarr v2, read-only)" if store.legacy else f"vmp store v{store.attrs['vmp_schema_version']}",
        "task": store.attrs.get("task"),
        "control_hz": store.attrs.get("control_hz"),
        "n_episodes": store.n_episodes,
        "action_free_episodes": int((~store.has_action).sum()),
        "n_steps": store.n_steps,
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())} if lengths.size else None,
        "keys": keys,
        "episodes_with_text": sum(1 for i in range(store.n_episodes) if store.episode_text(i)) if not store.legacy else 0,
    }
    if store.phase_names:
        info["phase_names"] = store.phase_names
    if ACTION_KEY in store.schema and store.has_action.any():  # over episodes with actions: action-free ones hold zeros
        with_action = np.repeat(store.has_action, store.episode_lengths)  # bool [n_steps]
        act = np.asarray(store.array(ACTION_KEY)[: store.n_steps], dtype=np.float64)[with_action]
        info["action_stats"] = {s: np.round(getattr(np, s)(act, axis=0), 6).tolist() for s in ("min", "max", "mean", "std")}
    size = disk_usage(store.path)
    info["size_on_disk_bytes"] = size
    info["uncompressed_bytes"] = raw_bytes
    info["compression_ratio"] = round(raw_bytes / size, 3) if size else None
    if store.inferred:
        info["inferred"] = list(store.inferred)
    return info


def validate_store(path: str | Path, deep: bool = False) -> list[str]:
    """Problems found in the store at ``path`` (empty list = valid). Never raises for a bad store.

    ``deep`` also reads every chunk of every array: a structural check reads only metadata and a few arrays, so
    it cannot see a damaged image chunk."""
    problems: list[str] = []
    try:
        store = EpisodeStore.open(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as e:  # a failure to open is a finding, not a crash
        return [f"cannot open: {type(e).__name__}: {e}"]
    corrupt = [str(e) for e in store.corrupt_chunks()] if deep else []
    attrs = store.attrs
    if not store.legacy:
        for a in ("vmp_schema_version", "task", "control_hz", "schema"):
            if a not in attrs:
                problems.append(f"root attrs lack {a!r}")
        if attrs.get("vmp_schema_version", 0) > SCHEMA_VERSION:
            problems.append(f"vmp_schema_version {attrs['vmp_schema_version']} is newer than {SCHEMA_VERSION}")
    raw_ends = np.asarray(store._ends_array[:], dtype=np.int64)
    n_incr = _committed_count(raw_ends, np.iinfo(np.int64).max)  # ignoring array lengths
    if raw_ends.size > n_incr:
        problems.append(f"meta/episode_ends has {raw_ends.size - n_incr} trailing entr(ies) that are not increasing "
                        f"(an interrupted append's torn commit; ignored by readers, removed by the next append)")
    claimed = int(raw_ends[n_incr - 1]) if n_incr else 0
    for k, spec in store.schema.items():
        arr = store.array(k)
        if arr.shape[0] < claimed:
            problems.append(f"data/{k} has {arr.shape[0]} rows, fewer than episode_ends[-1] = {claimed}")
        if tuple(arr.shape[1:]) != spec.shape:
            problems.append(f"data/{k} has step shape {tuple(arr.shape[1:])}, schema says {spec.shape}")
        if np.dtype(arr.dtype).name != spec.dtype:
            problems.append(f"data/{k} has dtype {arr.dtype}, schema says {spec.dtype}")
    n = store.n_steps
    if ACTION_KEY not in store.schema:
        problems.append(f"the store has no {ACTION_KEY!r} key (keys: {sorted(store.schema)}): nothing to train a policy on")
    try:
        if ACTION_KEY in store.schema and n:
            act = store.array(ACTION_KEY)[:n]
            bad = ~np.isfinite(act)
            if bad.any():
                problems.append(f"data/action holds {int(bad.sum())} NaN/inf value(s) (first at step {int(np.argwhere(bad)[0][0])})")
        if store.phase_names and "phase" in store.schema and n:
            ph = store.array("phase")[:n]
            if ph.min() < 0 or ph.max() >= len(store.phase_names):
                problems.append(f"data/phase values outside [0, {len(store.phase_names)})")
    except CorruptChunkError as e:  # a damaged chunk is a finding (--deep lists them all)
        if not corrupt:
            problems.append(str(e))
    return problems + corrupt


# Keys vmp's own recorders add for bookkeeping: never observations.
BOOKKEEPING_KEYS = ("tick_time", "policy_action", "command_status", PHASE_KEY)


def task_config(store: EpisodeStore, name: str, obs_keys: list[str] | None = None,
                image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The task config (a dict, written as YAML) that trains on ``store``: every key but the action and
    bookkeeping is an observation unless ``obs_keys`` says which; camera keys at ``image_size`` (H, W) when given
    (the sampler resizes at training time, vmp-deploy resizes the robot's frames)."""
    from .schema import key_kind

    candidates = [k for k in store.schema if k != ACTION_KEY and k not in BOOKKEEPING_KEYS]
    keys = candidates if obs_keys is None else list(obs_keys)
    unknown = sorted(set(keys) - set(candidates))
    if unknown:
        raise KeyError(f"--obs-keys {unknown} are not observation keys of {store.path}; choose from {candidates}")
    if not keys:
        raise ValueError(f"{store.path} has no observation keys (keys: {sorted(store.schema)})")
    if ACTION_KEY not in store.schema or not store.has_action.any():
        raise ValueError(f"{store.path} has no episodes with actions: nothing to train a policy on")
    obs, kinds = {}, {}
    for key in keys:
        spec = store.schema[key]
        kind = key_kind(key, spec)
        shape = list(spec.shape)
        if kind != LOW_DIM and image_size is not None:
            shape = [int(image_size[0]), int(image_size[1]), *shape[2:]]
        if kind == LOW_DIM and len(shape) != 1:
            raise ValueError(f"{store.path}: low-dim key {key!r} has shape {shape}; observations are vectors [D], "
                             f"images <cam>_image [H, W, C] uint8, depth <cam>_depth [H, W]")
        obs[key] = {"shape": shape, "type": {RGB: "rgb", DEPTH: "depth"}.get(kind, "low_dim")}
        kinds[kind] = True
    texts = [store.episode_text(i).get(LANGUAGE_KEY) for i in range(store.n_episodes)]
    instructions = sorted({t for t in texts if t})
    lengths = store.episode_lengths
    control_hz = store.attrs.get("control_hz")
    if not control_hz:
        raise ValueError(f"{store.path}: root attrs lack control_hz (the rate the demonstrations were recorded at)")
    obs_type = "rgbd" if DEPTH in kinds else "image" if RGB in kinds else "lowdim"
    return {
        "name": name,
        "store": str(store.path),
        "obs_type": obs_type,
        "control_hz": float(control_hz),
        # the recorder's limit, else 1.5 x the longest demonstration
        "max_episode_steps": int(store.attrs.get("max_episode_steps") or int(np.ceil(1.5 * lengths.max()))),
        "action_meaning": store.schema[ACTION_KEY].meaning,
        "key_meanings": {k: store.schema[k].meaning for k in keys},
        "language": instructions[0] if len(instructions) == 1 else None,
        "language_conditioned": len(instructions) > 1,
        "goal_keys": [],
        "shape_meta": {"obs": obs, "action": {"shape": list(store.schema[ACTION_KEY].shape)}},
    }


def write_task_config(config: dict[str, Any], out_dir: Path, source: str, overwrite: bool = False) -> Path:
    """``out_dir/task/<name>.yaml``, atomically; an existing file only with ``overwrite``."""
    import os

    import yaml

    path = Path(out_dir) / "task" / f"{config['name']}.yaml"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: --overwrite to replace it, or --name another")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by `vmp-data task --from-store {source}` from the store's schema; edit freely.\n"
              f"# Train: vmp-train --config-dir {out_dir} task={config['name']} policy=... encoder=...\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)
    return path


def _print_info(info: dict[str, Any]) -> None:
    print(f"{info['path']}  [{info['format']}]")
    print(f"  task: {info['task']}   control_hz: {info['control_hz']}")
    el = info["episode_length"]
    print(f"  episodes: {info['n_episodes']}   steps: {info['n_steps']}" +
          (f"   length min/mean/max: {el['min']}/{el['mean']:.1f}/{el['max']}" if el else ""))
    if info["action_free_episodes"]:
        print(f"  action-free episodes: {info['action_free_episodes']} (video without actions)")
    print("  keys:")
    for k, v in info["keys"].items():
        print(f"    {k:<28} {v['dtype']:<8} {str(tuple(v['shape'])):<16} {v['kind']:<8} {v['meaning']}")
    if "action_stats" in info:
        print("  action stats:")
        for s, v in info["action_stats"].items():
            print(f"    {s:<5} {np.array2string(np.asarray(v), precision=4, max_line_width=120)}")
    mib = info["size_on_disk_bytes"] / 2**20
    print(f"  size on disk: {mib:.2f} MiB   uncompressed: {info['uncompressed_bytes'] / 2**20:.2f} MiB   "
          f"compression ratio: {info['compression_ratio']}")
    if info.get("phase_names"):
        print(f"  phase_names: {info['phase_names']}")
    if info.get("episodes_with_text"):
        print(f"  episodes with text: {info['episodes_with_text']}")
    for note in info.get("inferred", []):
        print(f"  inferred: {note}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmp-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="summarise a store")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("validate", help="check a store; exit code 1 on problems")
    p.add_argument("path")
    p.add_argument("--deep", action="store_true",
                   help="also read every chunk and report each one that fails its checksum (slow: reads the whole store)")
    p = sub.add_parser("import-robomimic", help="convert a robomimic HDF5 file to a store")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--obs-keys", nargs="*", default=None, help="observation keys to import (default: all)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("import-lerobot", help="convert a LeRobot dataset (v3 layout) to a store")
    p.add_argument("input", help="local dataset root (holding meta/info.json)")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("export", help="write a store as a dataset of another stack (LeRobot v3)")
    p.add_argument("input", help="the store")
    p.add_argument("output", help="the dataset root to write")
    p.add_argument("--format", required=True, choices=["lerobot"])
    p.add_argument("--repo-id", default=None, help="the dataset's repo id (default: the output folder's name)")
    p.add_argument("--obs-keys", nargs="+", default=None, help="observation keys to export (default: all)")
    p.add_argument("--no-video", action="store_true", help="camera frames as PNG images (lossless) instead of mp4")
    p.add_argument("--state-keys", nargs="+", default=None,
                   help="low-dim keys concatenated into observation.state (what LeRobot's policies read)")
    p.add_argument("--env-state-keys", nargs="+", default=None,
                   help="low-dim keys concatenated into observation.environment_state (e.g. object poses)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("task", help="write the task config for training on a store (from its schema)")
    p.add_argument("--from-store", required=True, dest="store", help="the store (e.g. written by vmp-record)")
    p.add_argument("--name", default=None, help="task name (default: the store's file name)")
    p.add_argument("--out", default="vmp_configs", help="config folder: the task goes to OUT/task/NAME.yaml")
    p.add_argument("--obs-keys", nargs="+", default=None, help="observation keys (default: all but action/bookkeeping)")
    p.add_argument("--image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="train camera keys at this size (frames are resized when read; vmp-deploy resizes the robot's)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("view", help="watch a store's episodes (or a vmp-eval folder's rollouts) in Rerun")
    p.add_argument("path", help="a store (vmp-collect, vmp-record, vmp-deploy, imports) or a vmp-eval output folder")
    p.add_argument("--episode", type=int, default=None, metavar="N",
                   help="the episode to show (negative: from the end; default: the first 5)")
    p.add_argument("--save", default=None, metavar="FILE.rrd",
                   help="write a Rerun recording (open it with `rerun FILE.rrd`) instead of opening the viewer")
    return parser


def _info(args: argparse.Namespace) -> int:
    try:
        store = EpisodeStore.open(args.path, mode="r")
    except (OSError, ValueError, KeyError) as e:
        print(f"vmp-data info: {e}", file=sys.stderr)
        return 1
    info = store_info(store)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _validate(args: argparse.Namespace) -> int:
    problems = validate_store(args.path, deep=args.deep)
    if args.deep and not any(p.startswith("cannot open") for p in problems):
        unchecked = EpisodeStore.open(args.path, mode="r").unchecksummed()
        if unchecked:
            print(f"{args.path}: note: {len(unchecked)} array(s) carry no checksums (written before vmp stored "
                  f"a crc32c with every chunk): {', '.join(unchecked)}; --deep finds only chunks there that fail "
                  f"to decode, not flipped bits, which read back as data")
    if problems:
        print(f"{args.path}: INVALID")
        for pr in problems:
            print(f"  - {pr}")
        return 1
    print(f"{args.path}: OK")
    return 0


def _import_robomimic(args: argparse.Namespace) -> int:
    from .convert.robomimic import import_robomimic

    store = import_robomimic(args.input, args.output, obs_keys=args.obs_keys, overwrite=args.overwrite)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps) into {args.output}")
    store.close()
    return 0


def _import_lerobot(args: argparse.Namespace) -> int:
    from .convert.lerobot import import_lerobot

    store = import_lerobot(args.input, args.output, overwrite=args.overwrite)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps) into {args.output}")
    store.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    from .convert.lerobot import export_lerobot

    out = export_lerobot(args.input, args.output, repo_id=args.repo_id, keys=args.obs_keys,
                         video=not args.no_video, overwrite=args.overwrite, state_keys=args.state_keys,
                         env_state_keys=args.env_state_keys)
    print(f"exported {args.input} -> {out} (LeRobot v3)")
    return 0


def _task(args: argparse.Namespace) -> int:
    try:
        store = EpisodeStore.open(args.store, mode="r")
        name = args.name or Path(args.store).name.removesuffix(".zarr")
        config = task_config(store, name, args.obs_keys, args.image_size)
        path = write_task_config(config, Path(args.out), args.store, args.overwrite)
    except (OSError, ValueError, KeyError) as e:
        print(f"vmp-data task: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {len(config['shape_meta']['obs'])} observation key(s) "
          f"{sorted(config['shape_meta']['obs'])}, action {config['shape_meta']['action']['shape']}, "
          f"{config['control_hz']:g} Hz, max_episode_steps {config['max_episode_steps']}\n"
          f"train with: vmp-train --config-dir {args.out} task={name} policy=beso encoder="
          f"{'lowdim' if config['obs_type'] == 'lowdim' else 'compact_cnn'}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from .view import ViewError, view

    try:
        print(view(args.path, episode=args.episode, save=args.save))
    except ViewError as e:
        print(f"vmp-data view: {e}", file=sys.stderr)
        return 1
    return 0


# Sub-command name -> its handler (parsed arguments -> exit code).
_COMMANDS = {"info": _info, "validate": _validate, "import-robomimic": _import_robomimic,
             "import-lerobot": _import_lerobot, "export": _export, "task": _task, "view": _view}


def main(argv: list[str] | None = None) -> int:
    """Run the sub-command ``argv`` names (default: the command line); -> its exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return _COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "store_info", "validate_store"]
