"""`vmp-data view`: watch a store's episodes (or a `vmp-eval` folder's rollouts) in Rerun, the viewer LeRobot uses.

    vmp-data view STORE                    the first DEFAULT_EPISODES episodes, in a Rerun viewer window
    vmp-data view STORE --episode 12       episode 12 only
    vmp-data view STORE --save ep.rrd      write a recording instead (open it with `rerun ep.rrd`)
    vmp-data view EVAL_DIR                 a vmp-eval output folder (metrics.json, videos/)

Every store opens this way: vmp-collect's, imports, vmp-record's and vmp-deploy's recordings. What is logged,
all on the timelines ``step`` (the episode's step index) and ``time`` (step / the store's ``control_hz``, seconds):

    store                           static TextDocument: path, task, rate, episodes, keys and their meanings
    episode_<i>/<cam>_image         Image per step (uint8 HWC camera frames); ``*_depth`` keys as DepthImage
    episode_<i>/<key>               Scalars per step, one series per dimension (state, action, every low-dim key;
                                    flattened when not a vector); action-free episodes have no ``action``
    episode_<i>/text                TextLog: the episode's text (language, reasoning, seed, ...) at step 0, text
                                    recorded per tick (a deployed head's reasoning: [{tick, text}]) at its tick,
                                    phase names where ``phase`` changes, outcome/success at the last step

A vmp-eval folder (it keeps no store: mp4 videos, metrics.json with each episode's text, PNGs of predicted futures):

    evaluation                      static TextDocument: task, success rate and interval, latency
    rollout_<i>/video               the episode's mp4 (AssetVideo), frame k at step k (frame 0: the reset)
    rollout_<i>/text                TextLog: seed; a head's text extras (reasoning) at their steps; success, return
                                    and the env's metrics at the last step
    rollout_<i>/future_frames       Image: the future a head (PAD) predicted at that step, over the real frames

rerun-sdk is optional (``pip install vmp[viewer]``); it is imported only here, only when a viewer is asked for.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .schema import ACTION_KEY, LOW_DIM, PHASE_KEY, RGB
from .store import EpisodeStore

DEFAULT_EPISODES = 5  # episodes shown when --episode is not given: enough to compare, few enough to load quickly
APP_ID = "vmp"
END_TEXT = ("outcome", "success", "success_marked_by")  # episode text known at its end: logged at the last step


class ViewError(ValueError):
    """A request `vmp-data view` refuses, with the message to show."""


def import_rerun() -> Any:
    """rerun, or a ViewError saying how to install it (it is an optional extra)."""
    try:
        import rerun as rr
    except ImportError as e:
        raise ViewError("vmp-data view needs the Rerun SDK: pip install vmp[viewer]   (or: pip install 'rerun-sdk>=0.23')"
                        ) from e
    return rr


def has_display() -> bool:
    """Whether a viewer window can open here: on Linux a desktop session sets DISPLAY or WAYLAND_DISPLAY."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def choose_episodes(n: int, episode: int | None, what: str, source: Any) -> list[int]:
    """--episode N (negative counts from the end), else the first DEFAULT_EPISODES; refuses an index out of range."""
    if n == 0:
        raise ViewError(f"{source} holds no {what}s")
    if episode is None:
        return list(range(min(n, DEFAULT_EPISODES)))
    if not -n <= episode < n:
        raise ViewError(f"{source} has {n} {what}s: --episode {episode} is out of range (valid: 0..{n - 1}, "
                        f"or -{n}..-1 from the end)")
    return [episode % n]


# ---------------------------------------------------------------------------------------------------- stores
def store_description(store: EpisodeStore) -> str:
    """Markdown shown beside the plots: what the store is and what each key means."""
    lines = [f"# {store.attrs.get('task')}", "", f"`{store.path}`", "",
             f"{store.n_episodes} episodes, {store.n_steps} steps, control_hz {store.attrs.get('control_hz')}", "",
             "| key | shape | dtype | meaning |", "|---|---|---|---|"]
    lines += [f"| {k} | {list(s.shape)} | {s.dtype} | {s.meaning} |" for k, s in store.schema.items()]
    if store.phase_names:
        lines += ["", f"phases: {', '.join(store.phase_names)}"]
    return "\n".join(lines)


def _time_columns(rr: Any, steps: np.ndarray, hz: float | None) -> list[Any]:
    """The ``step`` timeline, and ``time`` in seconds when the control rate is known."""
    cols = [rr.TimeColumn("step", sequence=steps)]
    if hz:
        cols.append(rr.TimeColumn("time", duration=steps / float(hz)))
    return cols


def _set_time(rec: Any, step: int, hz: float | None) -> None:
    rec.set_time("step", sequence=int(step))
    if hz:
        rec.set_time("time", duration=step / float(hz))


def log_scalars(rec: Any, rr: Any, path: str, key: str, values: np.ndarray, hz: float | None) -> None:
    """One low-dim key as a time series per dimension, sent as columns (one call, not one per step)."""
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    dims = flat.shape[1]
    names = [key] if dims == 1 else [f"{key}[{d}]" for d in range(dims)]
    rec.log(path, rr.SeriesLines(names=names), static=True)
    rec.send_columns(path, indexes=_time_columns(rr, np.arange(len(flat)), hz),
                     columns=rr.Scalars.columns(scalars=flat.ravel()).partition(np.full(len(flat), dims)))


def log_frames(rec: Any, rr: Any, path: str, frames: np.ndarray, kind: str, hz: float | None) -> None:
    """Camera frames (or depth maps) one per step."""
    meter = 1000.0 if frames.dtype == np.uint16 else 1.0  # vmp stores depth in metres (float32) or mm (uint16)
    if kind == RGB and frames.dtype != np.uint8:  # diffusion_policy buffers keep frames as float 0-255
        frames = np.clip(frames, 0, 255).astype(np.uint8)
    for t, frame in enumerate(frames):
        _set_time(rec, t, hz)
        rec.log(path, rr.Image(frame) if kind == RGB else rr.DepthImage(frame, meter=meter))


def text_entries(text: Mapping[str, Any], length: int) -> list[tuple[int, str]]:
    """An episode's text as (step, line): timed lists ([{tick|step, text}], as vmp-deploy records a head's
    reasoning) at their steps, the outcome at the last step, everything else at step 0."""
    out = []
    for name, value in text.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) and "text" in v for v in value):
            out += [(int(v.get("tick", v.get("step", 0))), f"{name}: {v['text']}") for v in value]
        else:
            line = value if isinstance(value, str) else json.dumps(value)
            out.append((length - 1 if name in END_TEXT else 0, f"{name}: {line}"))
    return sorted(out, key=lambda e: e[0])


def phase_entries(phases: np.ndarray, names: list[str]) -> list[tuple[int, str]]:
    """(step, "phase: <name>") wherever the phase index changes."""
    p = np.asarray(phases).reshape(len(phases), -1)[:, 0]
    changes = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    return [(int(t), f"phase: {names[p[t]] if 0 <= p[t] < len(names) else p[t]}") for t in changes]


def log_text(rec: Any, rr: Any, path: str, entries: list[tuple[int, str]], hz: float | None) -> None:
    for step, line in entries:
        _set_time(rec, step, hz)
        rec.log(path, rr.TextLog(line, level="INFO"))


def log_episode(rec: Any, rr: Any, store: EpisodeStore, i: int) -> None:
    """Episode ``i`` under ``episode_<i>/``: frames, scalar series and text, on the step/time timelines."""
    hz = store.attrs.get("control_hz")
    prefix = f"episode_{i}"
    data = store.episode(i)
    length = len(next(iter(data.values())))
    for key, values in data.items():
        if key == ACTION_KEY and not store.has_action[i]:
            continue  # an action-free episode's action rows are zeros, not actions
        kind = store.kind(key)
        if kind == LOW_DIM:
            log_scalars(rec, rr, f"{prefix}/{key}", key, values, hz)
        else:
            log_frames(rec, rr, f"{prefix}/{key}", values, kind, hz)
    entries = text_entries(store.episode_text(i), length)
    if PHASE_KEY in data and store.phase_names:
        entries = sorted(entries + phase_entries(data[PHASE_KEY], store.phase_names), key=lambda e: e[0])
    log_text(rec, rr, f"{prefix}/text", entries, hz)


def open_store(path: str) -> EpisodeStore:
    try:
        return EpisodeStore.open(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ViewError(f"{path} is not an episode store (nor a vmp-eval folder with metrics.json): {e}") from e


def log_store(rec: Any, rr: Any, store: EpisodeStore, chosen: list[int]) -> None:
    """The store's description and its chosen episodes."""
    rec.log("store", rr.TextDocument(store_description(store), media_type=rr.MediaType.MARKDOWN), static=True)
    for i in chosen:
        log_episode(rec, rr, store, i)


# ---------------------------------------------------------------------------------------------------- eval folders
def is_eval_dir(path: str) -> bool:
    return (Path(path) / "metrics.json").is_file()


def log_rollout(rec: Any, rr: Any, root: Path, i: int, ep: Mapping[str, Any]) -> None:
    """Rollout ``i`` of a vmp-eval folder: its video (frame k = step k), its text and predicted future frames."""
    prefix, hz = f"rollout_{i}", None
    video = ep.get("video")
    if video and not Path(video).is_file():
        video = root / "videos" / Path(video).name  # metrics.json names it relative to where vmp-eval ran
    if video and Path(video).is_file():
        asset = rr.AssetVideo(path=str(video))
        rec.log(f"{prefix}/video", asset, static=True)
        ns = np.asarray(asset.read_frame_timestamps_nanos(), dtype=np.int64)
        if len(ns) > 1:
            hz = 1e9 / float(np.median(np.diff(ns)))
        rec.send_columns(f"{prefix}/video", indexes=[rr.TimeColumn("step", sequence=np.arange(len(ns))),
                                                      rr.TimeColumn("time", duration=ns * 1e-9)],
                         columns=rr.VideoFrameReference.columns_nanos(ns))
    last = max(int(ep.get("length") or 0) - 1, 0)
    entries = [(0, f"seed: {ep.get('seed')}")]
    entries += [(int(t["step"]), f"{t['name']}: {t['text']}") for t in ep.get("text") or []]  # a head's reasoning
    entries += [(last, f"success: {ep.get('success')}  return: {ep.get('return')}")]
    entries += [(last, f"{k}: {v}") for k, v in (ep.get("metrics") or {}).items()]
    if ep.get("error"):
        entries.append((last, f"error: {ep['error']}"))
    log_text(rec, rr, f"{prefix}/text", sorted(entries, key=lambda e: e[0]), hz)
    grids = ep.get("future_frames_dir")
    if grids:
        import imageio.v2 as imageio

        folder = Path(grids) if Path(grids).is_dir() else root / "videos" / Path(grids).name
        for png in sorted(folder.glob("step*.png")):
            _set_time(rec, int(re.sub(r"\D", "", png.stem)), hz)
            rec.log(f"{prefix}/future_frames", rr.Image(np.asarray(imageio.imread(png))[..., :3]))


def log_eval(rec: Any, rr: Any, root: Path, metrics: Mapping[str, Any], chosen: list[int]) -> None:
    """A vmp-eval folder's summary and its chosen rollouts."""
    summary = {k: metrics.get(k) for k in ("task", "n_episodes", "success_rate", "ci95_low", "ci95_high", "p50_ms")}
    rec.log("evaluation", rr.TextDocument("\n".join(f"{k}: {v}" for k, v in summary.items())), static=True)
    for i in chosen:
        log_rollout(rec, rr, root, i, metrics["per_episode"][i])


# ---------------------------------------------------------------------------------------------------- entry point
def view(path: str, episode: int | None = None, save: str | None = None) -> str:
    """Show ``path`` (a store or a vmp-eval folder) in a Rerun viewer, or write it to ``save`` (.rrd); -> a summary.
    Every refusal (no rerun, not a store, no such episode, no display) comes before a viewer or file is opened."""
    rr = import_rerun()
    if is_eval_dir(path):
        metrics, what = json.loads((Path(path) / "metrics.json").read_text()), "rollout"
        chosen = choose_episodes(len(metrics.get("per_episode") or []), episode, what, f"evaluation {path}")
        log = lambda rec: log_eval(rec, rr, Path(path), metrics, chosen)  # noqa: E731
    else:
        store, what = open_store(path), "episode"
        chosen = choose_episodes(store.n_episodes, episode, what, f"store {path}")
        log = lambda rec: log_store(rec, rr, store, chosen)  # noqa: E731
    if save is None and not has_display():
        raise ViewError("no display here (DISPLAY/WAYLAND_DISPLAY unset), so no viewer window can open: write a "
                        f"recording with `vmp-data view {path} --save out.rrd` and open it with `rerun out.rrd` where "
                        "there is a display")
    rec = rr.RecordingStream(APP_ID)
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        rec.save(save)
    else:
        rec.spawn()
    log(rec)
    rec.flush()
    if save is not None:
        rec.disconnect()  # finishes the file
    return f"{path}: {what}{'s' if len(chosen) > 1 else ''} {', '.join(map(str, chosen))} -> " \
           f"{save if save is not None else 'the Rerun viewer'}"


__all__ = ["DEFAULT_EPISODES", "ViewError", "view"]
