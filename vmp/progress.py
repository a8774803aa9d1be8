"""`progress`: the one progress bar every vmp command uses (tqdm), quiet when nobody watches it.

On a terminal it is tqdm's usual bar, redrawn in place. When stderr is not a terminal (nohup, a log file, a CI
job, a cluster's job log) in-place redraws become one line each: a 500-episode `vmp-collect` would write thousands.
There a bar writes a line only when ``NON_TTY_INTERVAL_S`` seconds have passed and, when its total is known, another
1/``NON_TTY_MAX_LINES`` of it is done (and one at its end): about ``NON_TTY_MAX_LINES`` lines at most, however long the
run. It writes whole lines instead of carriage returns, and ``set_postfix``/``set_description`` no longer force a
redraw of their own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

NON_TTY_INTERVAL_S = 30.0  # seconds between two lines of a bar written to a log, at least
NON_TTY_MAX_LINES = 50  # ... and 1/50 of the total done between them, at least: a log gets ~50 lines per bar at most


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _LineWriter:
    """A file for tqdm that turns each in-place redraw (``"\\r" + bar + padding``) into a line of its own."""

    def __init__(self, file: IO[str]):
        self._file = file
        self._open = False  # a bar line was written and not yet ended

    def write(self, s: str) -> int:
        for i, part in enumerate(str(s).split("\r")):
            if i and self._open:  # a redraw: end the previous line first
                self._file.write("\n")
                self._open = False
            for j, piece in enumerate(part.split("\n")):
                if j:
                    if self._open:
                        self._file.write("\n")
                    self._open = False
                piece = piece.rstrip(" ")  # tqdm's padding over a longer previous bar
                if piece:
                    self._file.write(piece)
                    self._open = True
        return len(s)

    def flush(self) -> None:
        getattr(self._file, "flush", lambda: None)()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str | None:
        return getattr(self._file, "encoding", None)


class _LogBar(tqdm):
    """tqdm whose postfix/description changes wait for the next timed refresh instead of forcing one."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):  # noqa: D102 - tqdm's signature
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):  # noqa: D102
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):  # noqa: D102
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc=None, refresh=True):  # noqa: D102
        super().set_description_str(desc, refresh=False)


def progress(iterable: Iterable | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one: ``total=``) writing to ``file`` (default: stderr).

    On a terminal: tqdm as given. Elsewhere: a line when ``mininterval`` seconds (default ``NON_TTY_INTERVAL_S``; a
    caller's value is kept) have passed and ``miniters`` steps (default: 1/``NON_TTY_MAX_LINES`` of the total) are
    done, no carriage returns, fixed width."""
    file = tqdm_kwargs.pop("file", None) or sys.stderr
    if _isatty(file):
        return tqdm(iterable, file=file, **tqdm_kwargs)
    tqdm_kwargs.setdefault("mininterval", NON_TTY_INTERVAL_S)
    total = tqdm_kwargs.get("total")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if total:
        tqdm_kwargs.setdefault("miniters", max(1, int(total) // NON_TTY_MAX_LINES))
    tqdm_kwargs.pop("dynamic_ncols", None)  # there is no terminal width to follow
    tqdm_kwargs.setdefault("ncols", 100)
    tqdm_kwargs.setdefault("ascii", True)
    # tqdm's monitor thread drops miniters to 1 on a bar quiet for maxinterval seconds: never, here
    tqdm_kwargs["maxinterval"] = float("inf")
    return _LogBar(iterable, file=_LineWriter(file), **tqdm_kwargs)


__all__ = ["NON_TTY_INTERVAL_S", "NON_TTY_MAX_LINES", "progress"]
