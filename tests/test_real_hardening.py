"""The SimRobot server against hostile and broken clients: every frame is answered or the connection closed, the
server keeps serving the real client, memory follows received bytes, idle and slow clients time out, only the
token holder controls the robot. Includes a property-based fuzz test (hypothesis)."""

from __future__ import annotations

import socket
import struct
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmp.real import wire
from vmp.real.sim_robot import SimRobot

TOY = {"target": "vmp.real.toy:ToyReachEnv", "kwargs": {"max_episode_steps": 10_000}, "control_hz": 50}
LIMITS = {"idle_timeout_s": 2.0, "frame_timeout_s": 0.5, "max_clients": 4}


def frame(header: object, payload: bytes = b"", payload_len: int | None = None) -> bytes:
    h = msgpack.packb(header, use_bin_type=True)
    n = len(payload) if payload_len is None else payload_len
    return struct.pack(">4sHHIQ", wire.MAGIC, wire.VERSION, 0, len(h), n) + h + payload


def raw(robot: SimRobot, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", robot._port), timeout=timeout)


def reply_to(robot: SimRobot, data: bytes, hello: bool = False) -> wire.Message | None:
    """Send bytes on a fresh connection (after an authenticated hello if asked) -> the server's reply, or None
    when it closed the connection."""
    with raw(robot) as s:
        if hello:
            wire.send(s, wire.Message("hello", {"version": wire.VERSION, "token": robot._token}))
            assert wire.recv(s).type == "spec"
        s.sendall(data)
        try:
            return wire.recv(s)
        except (wire.ConnectionClosed, OSError):
            return None


def real_step(robot: SimRobot) -> None:
    robot.reset(seed=1)
    robot.act(np.zeros(2, np.float32))


def rss_mb(robot: SimRobot) -> float:
    with open(f"/proc/{robot.process.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def robot():
    with SimRobot(TOY, server=LIMITS) as r:
        yield r


@pytest.fixture(scope="module")
def patient_robot():
    """For the fuzz test: an idle timeout long enough that a loaded machine never drops the real client."""
    with SimRobot(TOY, server={**LIMITS, "idle_timeout_s": 120.0}) as r:
        yield r


@pytest.mark.parametrize("header, hello, answer", [
    ({"type": "x", "arrays": [{"name": "a", "dtype": "uint8", "shape": [2**32, 2**32], "nbytes": 0}]}, False, "protocol"),
    ({"type": "x", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1], "nbytes": 1.0}]}, False, "protocol"),
    ({"type": "x", "arrays": [{"name": ["a"], "dtype": "uint8", "shape": [1], "nbytes": 1}]}, False, "protocol"),
    ({"type": "reset", "fields": {"seed": "abc"}}, True, "seed"),
    ({"type": "reset", "fields": {"seed": -1}}, True, "seed"),
    ({"type": "reset", "fields": {"seed": [1]}}, True, "seed"),
    ({"type": "bye", "fields": {}}, False, "authenticated"),
    ({"type": "hello", "fields": {"version": wire.VERSION, "token": "guess"}}, False, "token"),
])
def test_hostile_frames_are_answered_and_the_robot_keeps_serving(robot, header, hello, answer):
    payload = b"\0" if header.get("arrays") else b""
    msg = reply_to(robot, frame(header, payload), hello=hello)
    assert msg is not None and msg.type == "error" and answer in msg.fields["message"]
    real_step(robot)
    assert robot.alive


def test_a_client_that_resets_before_the_reply_does_not_kill_the_server(robot):
    for _ in range(3):
        s = raw(robot)
        wire.send(s, wire.Message("hello", {"version": wire.VERSION, "token": robot._token}))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        s.close()
    real_step(robot)
    assert robot.alive


def test_huge_declared_frames_idle_and_slow_clients_cannot_stall_it(robot):
    before = rss_mb(robot)
    stalls = [raw(robot) for _ in range(2)]
    stalls[0].sendall(frame({"type": "x"}, payload_len=wire.MAX_PAYLOAD_BYTES))  # declares 256 MiB, sends nothing
    for _ in range(20):  # the real client is served meanwhile (each request within its 2 s timeout)
        real_step(robot)
    assert rss_mb(robot) - before < 20  # nothing was allocated for bytes that never came
    time.sleep(LIMITS["frame_timeout_s"] + 0.5)
    stalls[0].settimeout(2.0)
    assert stalls[0].recv(1) == b""  # the slow frame timed out and the server closed it
    time.sleep(LIMITS["idle_timeout_s"])
    stalls[1].settimeout(2.0)
    assert stalls[1].recv(1) == b""  # so did the idle connection
    for s in stalls:
        s.close()


def test_clients_beyond_the_limit_are_refused_cleanly(robot):
    robot.disconnect(shutdown=False)  # the idle timeout of the test above dropped the real client too: reconnect
    robot.connect()
    idle = [raw(robot) for _ in range(LIMITS["max_clients"] - 1)]  # the real client holds one slot
    time.sleep(0.2)
    with raw(robot) as extra:
        msg = wire.recv(extra)
    assert msg.type == "error" and "busy" in msg.fields["message"]
    real_step(robot)
    for s in idle:
        s.close()


def test_a_client_taking_the_slot_of_one_that_just_left_is_served(robot):
    others = [raw(robot) for _ in range(LIMITS["max_clients"] - 1)]  # with the real client: every slot taken
    time.sleep(0.2)
    others.pop().close()  # its server thread frees the slot a moment after the close
    with raw(robot) as s:
        wire.send(s, wire.Message("hello", {"version": wire.VERSION, "token": robot._token}))
        assert wire.recv(s).type == "spec"  # not "busy"
    real_step(robot)
    for s in others:
        s.close()


ints = st.integers(-2**63, 2**63 - 1)  # what msgpack can carry
names = st.one_of(st.text(max_size=4), ints, st.lists(ints, max_size=2), st.none())
entries = st.fixed_dictionaries({}, optional={
    "name": names,
    "dtype": st.one_of(st.sampled_from(sorted(wire.DTYPES) + ["object", "complex128"]), ints, st.none()),
    "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), ints, st.text(max_size=3)),
    "nbytes": st.one_of(st.integers(-1, 2**40), st.floats(allow_nan=True), st.text(max_size=3)),
})
values = st.recursive(st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=8)),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=6)
headers = st.fixed_dictionaries({
    "type": st.one_of(st.sampled_from(["hello", "reset", "observe", "act", "stop", "bye", "spec"]), st.text(max_size=5)),
}, optional={"fields": st.one_of(st.dictionaries(st.sampled_from(["seed", "token", "version", "shutdown", "x"]), values,
                                                 max_size=3), values),
             "arrays": st.one_of(st.lists(entries, max_size=3), values)})


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, payload=st.binary(max_size=64), declared=st.one_of(st.none(), st.integers(0, 2**20)),
       cut=st.one_of(st.none(), st.integers(0, 40)), hello=st.booleans())
def test_fuzz_frames_never_take_the_server_down(patient_robot, header, payload, declared, cut, hello):
    """Valid prefixes with random headers (fields, array entries), payloads, declared lengths and truncations, each
    followed by a real client's successful step."""
    robot = patient_robot
    if hello and header["type"] == "bye":  # the token holder may shut the server down: that is its right
        header = {**header, "type": "observe"}
    data = frame(header, payload, declared)
    if cut is not None:
        data = data[: 20 + cut]
    try:
        with raw(robot, timeout=1.0) as s:
            if hello:
                wire.send(s, wire.Message("hello", {"version": wire.VERSION, "token": robot._token}))
                wire.recv(s)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # a truncated or short frame ends here instead of waiting for its timeout
            try:
                wire.recv(s)
            except (wire.ConnectionClosed, wire.ProtocolError, OSError):
                pass
    except OSError:
        pass
    robot.act(np.zeros(2, np.float32)) if robot._last_obs is not None else real_step(robot)


def test_fuzzing_left_memory_bounded(patient_robot):
    """Runs after the fuzz test in this module (same server process)."""
    assert rss_mb(patient_robot) < 400
