"""Wire protocol between the daemon and a robot process (SimRobot today).

Why not pickle: a socket is untrusted input, and unpickling runs code. A frame is

    | magic b"VMPW" | version u16 | reserved u16 | header_len u32 | payload_len u64 |  (20 bytes, big-endian)
    | header: msgpack map {"type": str, "fields": {...}, "arrays": [{name, dtype, shape, nbytes}]} |
    | payload: the arrays' raw C-order bytes, concatenated in header order |

Only plain msgpack types are decoded (no extension types), array dtypes come from a whitelist, every field of an
array entry is type-checked, and every length is checked against limits; a frame's bytes are read in chunks as
they arrive, so memory grows only with what a peer actually sent. Any malformed frame raises `ProtocolError`.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from typing import Any

import msgpack
import numpy as np

MAGIC = b"VMPW"
VERSION = 1
_PREFIX = struct.Struct(">4sHHIQ")
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of msgpack metadata
MAX_PAYLOAD_BYTES = 256 << 20  # 256 MiB of arrays (several uncompressed camera frames)
MAX_ARRAYS = 256
MAX_NDIM = 8
RECV_CHUNK = 1 << 20  # bytes read per recv call: a large declared frame is allocated only as it arrives
DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"})


class ProtocolError(ValueError):
    """A frame broke the wire format (bad magic, version, size, dtype, shape)."""


class ConnectionClosed(ConnectionError):
    """The peer closed the socket (process died or disconnected)."""


@dataclasses.dataclass
class Message:
    """One decoded frame: a type tag, plain fields, and named arrays."""

    type: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def encode(msg: Message) -> bytes:
    """Message -> one frame (bytes). Raises ProtocolError if it would exceed the limits."""
    metas, buffers = [], []
    for name, arr in msg.arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {arr.dtype} not in the wire whitelist {sorted(DTYPES)}")
        metas.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "nbytes": arr.nbytes})
        buffers.append(arr.tobytes())
    if len(metas) > MAX_ARRAYS:
        raise ProtocolError(f"{len(metas)} arrays exceed the limit {MAX_ARRAYS}")
    header = msgpack.packb({"type": msg.type, "fields": msg.fields, "arrays": metas}, use_bin_type=True)
    payload_len = sum(len(b) for b in buffers)
    if len(header) > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame too large: header {len(header)} B (max {MAX_HEADER_BYTES}), payload {payload_len} B (max {MAX_PAYLOAD_BYTES})")
    return b"".join([_PREFIX.pack(MAGIC, VERSION, 0, len(header), payload_len), header, *buffers])


def decode(prefix: bytes, header: bytes, payload: bytes) -> Message:
    """Inverse of `encode`, validating everything; arrays are fresh, writable copies."""
    try:
        head = msgpack.unpackb(header, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ProtocolError(f"undecodable frame header: {exc}") from exc
    if not isinstance(head, dict) or not isinstance(head.get("type"), str) or not isinstance(head.get("fields", {}), dict):
        raise ProtocolError(f"frame header must be a map with a str 'type' and a map 'fields', got {type(head).__name__}")
    metas = head.get("arrays", [])
    if not isinstance(metas, list) or len(metas) > MAX_ARRAYS:
        raise ProtocolError(f"frame header 'arrays' must be a list of at most {MAX_ARRAYS} entries")
    arrays, offset = {}, 0
    for meta in metas:
        name, dtype, shape, nbytes = _array_entry(meta)
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice in the frame")
        if offset + nbytes > len(payload):
            raise ProtocolError(f"array {name!r}: {nbytes} B at offset {offset} overrun the {len(payload)} B payload")
        itemsize = np.dtype(dtype).itemsize
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=nbytes // itemsize, offset=offset).reshape(shape).copy()
        offset += nbytes
    if offset != len(payload):
        raise ProtocolError(f"payload has {len(payload) - offset} trailing bytes")
    return Message(head["type"], head.get("fields", {}), arrays)


def _array_entry(meta: Any) -> tuple[str, str, tuple[int, ...], int]:
    """One header array entry, every field type-checked -> (name, dtype, shape, nbytes)."""
    if not isinstance(meta, dict):
        raise ProtocolError(f"array entry must be a map, got {type(meta).__name__}")
    name, dtype, shape, nbytes = (meta.get(k) for k in ("name", "dtype", "shape", "nbytes"))
    if not isinstance(name, str):
        raise ProtocolError(f"array entry {meta!r}: 'name' must be a str")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"array {name!r}: dtype {dtype!r} not in the wire whitelist")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_PAYLOAD_BYTES for d in shape)):
        raise ProtocolError(f"array {name!r}: shape {shape!r} must be a list of at most {MAX_NDIM} non-negative ints")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool):
        raise ProtocolError(f"array {name!r}: nbytes {nbytes!r} must be an int")
    size = np.dtype(dtype).itemsize
    for d in shape:  # Python ints: no overflow, and it stops once past the limit
        size *= d
        if size > MAX_PAYLOAD_BYTES:
            break
    if size != nbytes:
        raise ProtocolError(f"array {name!r}: shape {shape} x {dtype} does not match nbytes {nbytes}")
    return name, dtype, tuple(shape), nbytes


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed on the wire")


def parse_prefix(prefix: bytes) -> tuple[int, int]:
    """Check magic/version/limits of a 20-byte frame prefix -> (header_len, payload_len)."""
    magic, version, _, header_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}, expected {MAGIC!r} (not a vmp peer?)")
    if version != VERSION:
        raise ProtocolError(f"wire protocol version {version} is not supported (this side speaks {VERSION})")
    if header_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame too large: header {header_len} B, payload {payload_len} B")
    return header_len, payload_len


def send(sock: socket.socket, msg: Message) -> None:
    """Send one framed message (the socket's timeout applies)."""
    sock.sendall(encode(msg))


def recv(sock: socket.socket, frame_timeout_s: float | None = None) -> Message:
    """Receive one framed message; raises ConnectionClosed on EOF, socket.timeout on timeout, ProtocolError on a
    malformed frame. The wait for a frame's first bytes uses the socket's timeout; with ``frame_timeout_s`` the
    rest of the frame must follow within that time (a peer dribbling bytes cannot hold a server)."""
    prefix = _recv_exact(sock, _PREFIX.size, None)
    header_len, payload_len = parse_prefix(prefix)
    deadline = None if frame_timeout_s is None else time.monotonic() + frame_timeout_s
    header = _recv_exact(sock, header_len, deadline)
    payload = _recv_exact(sock, payload_len, deadline)
    return decode(prefix, header, payload)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"frame not complete in time ({len(buf)} of {n} bytes)")
            sock.settimeout(left)
        chunk = sock.recv(min(RECV_CHUNK, n - len(buf)))
        if not chunk:
            raise ConnectionClosed(f"peer closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
