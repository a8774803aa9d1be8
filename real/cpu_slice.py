"""The control loop's timing at normal priority: a short scheduler slice for a process's threads (Linux's EEVDF
scheduler, 6.12+) and 1 ns timer slack, both unprivileged. Used by the control loop and by the simulated robot."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import threading

log = logging.getLogger(__name__)


class _SchedAttr(ctypes.Structure):
    """Linux's struct sched_attr (sched_setattr(2)); for SCHED_OTHER, sched_runtime is the slice the thread asks for."""

    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
                ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32)]


# (sched_setattr, sched_getattr) syscall numbers; the libc has no wrapper
_SCHED_ATTR_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275)}
_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _get_sched_attr(tid: int = 0) -> tuple[_SchedAttr, int] | None:
    """Thread ``tid``'s sched_attr (0: the calling thread) and the sched_setattr syscall number; None off Linux or
    where unreadable (a thread that has exited)."""
    calls = _SCHED_ATTR_SYSCALLS.get(platform.machine())
    if sys.platform != "linux" or calls is None:
        return None
    attr = _SchedAttr()
    if _libc().syscall(calls[1], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return attr, calls[0]


def sched_slice_ns(tid: int = 0) -> int | None:
    """Thread ``tid``'s scheduler slice in ns (the kernel's base slice unless one was asked for; 0: the calling
    thread), None where it cannot be read."""
    got = _get_sched_attr(tid)
    return None if got is None else int(got[0].sched_runtime)


def timer_slack_ns() -> int | None:
    """The calling thread's timer slack in ns (how late the kernel may fire its sleeps), None off Linux."""
    return int(_libc().prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)) if sys.platform == "linux" else None


@contextlib.contextmanager
def short_slice(slice_us: int):
    """Every thread of this process asks the scheduler for a ``slice_us`` slice, and the calling one for 1 ns timer
    slack; on exit the threads go back to the kernel's default slice and the calling one to its timer slack. Policies
    and nice values stay as they are; threads started meanwhile by a sliced thread inherit its slice.

    Linux's EEVDF scheduler (6.12+) gives a thread that asks for a short slice an early virtual deadline, so its
    wake-up preempts a thread that is using a longer one; no privilege is needed. All threads, not only the loop's:
    a helper thread preempted while it holds the GIL (the one that receives chunks, a camera's) would hold up the
    loop thread until it runs again. Older kernels ignore the request, other systems skip it."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if slice_us > 0 and sys.platform == "linux" else []
    attrs = {tid: got for tid in tids if (got := _get_sched_attr(tid)) is not None}
    if not attrs:
        yield
        return
    libc = _libc()
    slack = timer_slack_ns()

    def set_slice(ns: int) -> list[int]:  # 0: back to the kernel's base slice; -> the threads it failed for
        failed = []
        for tid, (attr, setattr_call) in attrs.items():
            attr.size, attr.sched_runtime = ctypes.sizeof(_SchedAttr), ns
            if libc.syscall(setattr_call, tid, ctypes.byref(attr), 0) != 0:
                failed.append(tid)
        return failed

    failed = set_slice(int(slice_us * 1000))
    if threading.get_native_id() in failed:
        log.warning("sched_slice_us=%d: sched_setattr failed (%s): this thread keeps the default slice", slice_us,
                    os.strerror(ctypes.get_errno()))
    libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    try:
        yield
    finally:
        set_slice(0)  # a thread that has exited meanwhile fails quietly
        libc.prctl(_PR_SET_TIMERSLACK, slack, 0, 0, 0)
