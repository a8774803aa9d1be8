"""Wire protocol: round trips, and every malformed frame is refused with a ProtocolError (never unpickled)."""

import socket
import struct

import msgpack
import numpy as np
import pytest

from vmp.real import wire


def test_roundtrip_fields_and_arrays():
    arrays = {"img": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), "q": np.array([1.5, -2.0], np.float32),
              "empty": np.zeros((0, 4), np.float64)}
    msg = wire.Message("obs", {"timestamp": 1.25, "flags": [1, 2], "name": "x"}, arrays)
    frame = wire.encode(msg)
    prefix, rest = frame[:20], frame[20:]
    hlen, plen = wire.parse_prefix(prefix)
    out = wire.decode(prefix, rest[:hlen], rest[hlen:hlen + plen])
    assert out.type == "obs" and out.fields == msg.fields
    for k, v in arrays.items():
        assert out.arrays[k].dtype == v.dtype and np.array_equal(out.arrays[k], v)
    out.arrays["q"][0] = 9  # copies, writable
    assert arrays["q"][0] == 1.5


def test_socket_roundtrip():
    a, b = socket.socketpair()
    with a, b:
        wire.send(a, wire.Message("act", {}, {"action": np.ones(7, np.float32)}))
        got = wire.recv(b)
        assert got.type == "act" and got.arrays["action"].shape == (7,)
        a.close()
        with pytest.raises(wire.ConnectionClosed):
            wire.recv(b)


def _frame(header: dict, payload: bytes = b"", magic=wire.MAGIC, version=wire.VERSION) -> tuple[bytes, bytes, bytes]:
    h = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">4sHHIQ", magic, version, 0, len(h), len(payload)), h, payload


def test_bad_magic_version_and_size_refused():
    p, _, _ = _frame({"type": "x"}, magic=b"NOPE")
    with pytest.raises(wire.ProtocolError, match="magic"):
        wire.parse_prefix(p)
    p, _, _ = _frame({"type": "x"}, version=wire.VERSION + 1)
    with pytest.raises(wire.ProtocolError, match="version"):
        wire.parse_prefix(p)
    big = struct.pack(">4sHHIQ", wire.MAGIC, wire.VERSION, 0, 10, wire.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(wire.ProtocolError, match="too large"):
        wire.parse_prefix(big)


def test_bad_arrays_refused():
    meta = {"name": "a", "dtype": "object", "shape": [1], "nbytes": 8}
    with pytest.raises(wire.ProtocolError, match="whitelist"):
        wire.decode(*_frame({"type": "x", "arrays": [meta]}, b"\0" * 8))
    meta = {"name": "a", "dtype": "float32", "shape": [3], "nbytes": 12}
    with pytest.raises(wire.ProtocolError, match="overrun"):
        wire.decode(*_frame({"type": "x", "arrays": [meta]}, b"\0" * 8))  # truncated payload
    with pytest.raises(wire.ProtocolError, match="trailing"):
        wire.decode(*_frame({"type": "x", "arrays": []}, b"\0" * 4))
    with pytest.raises(wire.ProtocolError, match="map"):
        wire.decode(*_frame([1, 2, 3]))  # type: ignore[arg-type]


@pytest.mark.parametrize("meta, match", [
    ({"name": "a", "dtype": "uint8", "shape": [2**32, 2**32], "nbytes": 0}, "non-negative ints"),
    ({"name": "a", "dtype": "uint8", "shape": [2**20, 2**20, 2**20], "nbytes": 0}, "does not match"),  # product huge
    ({"name": "a", "dtype": "uint8", "shape": [2**63 - 1], "nbytes": 0}, "non-negative ints"),
    ({"name": "a", "dtype": "uint8", "shape": [-1], "nbytes": 0}, "non-negative ints"),
    ({"name": "a", "dtype": "uint8", "shape": [True], "nbytes": 1}, "non-negative ints"),
    ({"name": "a", "dtype": "uint8", "shape": [1], "nbytes": 1.0}, "must be an int"),
    ({"name": ["a"], "dtype": "uint8", "shape": [1], "nbytes": 1}, "'name' must be a str"),
    ({"name": "a", "dtype": ["uint8"], "shape": [1], "nbytes": 1}, "whitelist"),
    ({"name": "a", "dtype": "uint8", "shape": "1", "nbytes": 1}, "non-negative ints"),
    ("not a map", "must be a map"),
])
def test_hostile_array_entries_are_protocol_errors(meta, match):
    """Well-formed msgpack with hostile field values: always a ProtocolError (the server answers it), never a
    ValueError/TypeError/OverflowError from numpy that would take a server down."""
    with pytest.raises(wire.ProtocolError, match=match):
        wire.decode(*_frame({"type": "x", "arrays": [meta]}, b"\0"))


def test_duplicate_array_names_refused():
    meta = {"name": "a", "dtype": "uint8", "shape": [1], "nbytes": 1}
    with pytest.raises(wire.ProtocolError, match="twice"):
        wire.decode(*_frame({"type": "x", "arrays": [meta, meta]}, b"\0\0"))


def test_extension_types_refused():
    h = msgpack.packb({"type": "x", "fields": {"evil": msgpack.ExtType(42, b"payload")}}, use_bin_type=True)
    p = struct.pack(">4sHHIQ", wire.MAGIC, wire.VERSION, 0, len(h), 0)
    with pytest.raises(wire.ProtocolError, match="extension"):
        wire.decode(p, h, b"")


def test_encode_refuses_object_arrays():
    with pytest.raises(wire.ProtocolError, match="whitelist"):
        wire.encode(wire.Message("x", {}, {"o": np.array([object()], dtype=object)}))
