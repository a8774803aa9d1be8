"""Writes that survive a full disk: what such a write fails with, the file it was writing, atomic JSON files, and a
command's one-line exit."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # what a write to a full disk (or an exhausted quota) fails with


@contextlib.contextmanager
def writing(what: str | Path):
    """An OSError raised inside names ``what`` (the file or folder being written): Python's own write errors name
    no file ("[Errno 28] No space left on device")."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, f"could not write {what}: {err.strerror or err}") from err


@contextlib.contextmanager
def exit_on_full_disk(program: str):
    """A full disk ends ``program`` with one line (the error names the file and what survives) and exit status 1,
    not a traceback; any other error passes."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        logging.getLogger(program).error("%s: %s", program, str(err).removeprefix(f"[Errno {err.errno}] "))
        sys.exit(1)


def write_json(path: str | Path, obj: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """``obj`` as indented JSON at ``path``, atomically (a temporary name in the same folder, flushed to disk, then
    renamed): a crash or a full disk leaves the previous file or the new one, never half of one. A failed write
    removes the temporary file and raises OSError naming ``path``, the reason and whether the file there is unchanged.
    ``default``: json's, for values JSON has no type for (numpy numbers: ``float``)."""
    path = Path(path)
    text = json.dumps(obj, indent=2, default=default) + "\n"  # what is not JSON fails here, before a file is touched
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = "; the file there is unchanged" if path.exists() else ""
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}{kept}") from err
    return path
