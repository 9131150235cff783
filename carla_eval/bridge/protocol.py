"""Wire format of the agent bridge, shared by both sides: Python 3.7 (leaderboard) and the project's Python.

This file must stay importable by Python 3.7 with only the standard library and numpy (the leaderboard's
environment loads it by file path from `py37_agent.py`); `tests/test_bridge_compat.py` checks it with
`vermin -t=3.7-` and an import hook that forbids everything else. Annotations are never evaluated
(`from __future__ import annotations`), so they may use the modern spelling.

Frame (every message, both directions):

    prefix   12 bytes  struct "!4sIQ": magic b"VLMB", header length H, payload length P (big-endian)
    header   H bytes   UTF-8 JSON: {"body": <value>, "buffers": [{"dtype", "shape", "offset"}, ...]}
    payload  P bytes   the raw bytes of every numpy array of the message, each at a 64-byte aligned offset

`body` is plain JSON (dict with str keys, list, str, int, float incl. NaN/inf, bool, null) with two
markers: {"$nd": i} stands for numpy array i of `buffers` (dtype string as `numpy.dtype.str`, C order),
{"$tuple": [...]} for a tuple. Nothing is pickled: a receiver can only ever get numbers, strings and
numeric arrays. The prefix and the `hello` exchange are frozen across protocol versions, so two
mismatched sides can always tell each other which one to update.

Conversation (client = the 3.7-side agent, one connection = one route = one agent on the server):

    hello    {"op": "hello", "protocol", "project_version", "peer"} -> {"ok", "protocol", "project_version"}
    setup    {"op": "setup", "config": path_to_conf_file} -> {"ok", "sensors", "images", "resize", "track"}
    plan     {"op": "plan", "gps", "gps_options", "world", "world_options"} -> {"ok"}
    step     {"op": "step", "timestamp", "input"} -> {"ok", "control": {steer, throttle, brake, ...}}
    destroy  {"op": "destroy"} -> {"ok"}; the server then closes the connection
A failed request answers {"ok": false, "error": "...", "kind": "..."}.

Images: the server tells the client in `setup` the (width, height) each camera must have; the client
resizes with numpy only (`resize_image`): "bilinear" reproduces OpenCV's INTER_LINEAR (what the project's
dataset and agent use) within 1 grey level; "nearest" picks the source pixel under each output pixel
centre, several times cheaper, a few grey levels off on edges. Sizes are those before any padding.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import socket
import struct
import time

import numpy as np

PROTOCOL_VERSION = 1  # bump on any change of the messages below the frozen prefix/hello
PROJECT_VERSION = "0.1.0"  # must equal the project's version (pyproject.toml); a test checks it
MAGIC = b"VLMB"
PREFIX = struct.Struct("!4sIQ")  # magic, header length, payload length
ALIGN = 64  # payload offset alignment of every array (bytes)
MAX_HEADER = 64 << 20  # sanity bounds: a corrupt or foreign stream fails fast instead of allocating GBs
MAX_PAYLOAD = 4 << 30
ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float: the only array kinds that cross
RESIZE_METHODS = ("bilinear", "nearest")
BLOCK_BYTES = 256 << 10  # bilinear resize works on row blocks of about this many bytes (cache-sized)


# The 3.7-side agent's own config file (the leaderboard's --agent-config), JSON, written by
# carla_eval/bridge/launch.py; every timeout is in seconds and bounds one call of the agent.
CLIENT_CONFIG_DEFAULTS = {
    "address": "",  # required: where the driving server listens (unix:/path or tcp:127.0.0.1:PORT)
    "agent_config": "",  # handed to the server-side agent's setup(), e.g. the driving checkpoint folder
    "connect_timeout": 10.0,  # connecting + the version handshake
    "reconnect_window": 3.0,  # seconds a refused connection at setup, or one reset before the hello
    # reply, is retried (a driving server being restarted by the launcher takes a moment; each attempt
    # bounded by connect_timeout); small, so that no server at all still fails fast
    "setup_timeout": 300.0,  # the server builds the agent and loads the checkpoint (per route)
    "step_timeout": 30.0,  # one run_step round trip; beyond it the car brakes and the route is failed
    "destroy_timeout": 30.0,  # destroy() never waits longer than this
    "shared_memory": True,  # camera images through a /dev/shm region both sides map (Linux), not the socket
    "resize_threads": min(6, os.cpu_count() or 1),  # cameras resized in parallel on the 3.7 side (numpy
    # releases the GIL); 1 = one after the other
}


class BridgeError(Exception):
    """Any bridge failure; the message says what happened and what to do."""


class ProtocolError(BridgeError):
    """Malformed frame or message, or a value that cannot cross the bridge."""


class PeerGone(BridgeError):
    """The other side closed the connection (process ended or crashed)."""


class BridgeTimeout(BridgeError):
    """The other side did not answer within the bounded time."""


# ----------------------------------------------------------------------------------------------------
# Addresses: "unix:/path/to/socket" or "tcp:127.0.0.1:PORT" (loopback only: the bridge is local)
# ----------------------------------------------------------------------------------------------------
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_address(address: str) -> tuple[int, object]:
    """(socket family, sockaddr) of a bridge address; raises BridgeError on anything non-local."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path:
            raise BridgeError("bridge address 'unix:' needs a socket path, e.g. unix:/tmp/vlmad_bridge.sock")
        if len(path.encode()) > 107:
            raise BridgeError(f"Unix socket path {path!r} is longer than the 107 bytes the OS allows; "
                              f"use a shorter path or a tcp:127.0.0.1:PORT address")
        return socket.AF_UNIX, path
    if address.startswith("tcp:"):
        host, sep, port = address[len("tcp:"):].rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise BridgeError(f"bad bridge address {address!r}; expected tcp:127.0.0.1:PORT")
        if host not in LOOPBACK_HOSTS and not host.startswith("127."):
            raise BridgeError(f"bridge address {address!r} is not a loopback address: the bridge carries "
                              f"unauthenticated local traffic only (use 127.0.0.1)")
        return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))
    raise BridgeError(f"bad bridge address {address!r}; expected unix:/path/to.sock or tcp:127.0.0.1:PORT")


def connect(address: str, timeout: float) -> socket.socket:
    """A connected socket to the server at `address`, bounded by `timeout` seconds."""
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except socket.timeout:  # noqa: UP041 (3.7: not TimeoutError)
        sock.close()
        raise BridgeTimeout(f"no driving server answered at {address} within {timeout:g} s") from None
    except OSError as e:
        sock.close()
        raise PeerGone(f"no driving server at {address} ({e.strerror or e})") from None
    _tune(sock, family)
    return sock


def _tune(sock: socket.socket, family: int) -> None:
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------
# Encoding: nested plain values + numpy arrays <-> (header bytes, list of buffers)
# ----------------------------------------------------------------------------------------------------
def _encode(obj, arrays: list):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ARRAY_KINDS:
            raise ProtocolError(f"cannot send an array of dtype {obj.dtype} (only bool/int/uint/float)")
        arrays.append(obj if obj.flags.c_contiguous else obj.copy(order="C"))  # (keeps 0-d arrays 0-d)
        return {"$nd": len(arrays) - 1}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), arrays)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError(f"dict keys must be strings to cross the bridge, got {k!r}")
            if k in ("$nd", "$tuple"):
                raise ProtocolError(f"dict key {k!r} is reserved by the bridge protocol")
            out[k] = _encode(v, arrays)
        return out
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, arrays) for v in obj]}
    raise ProtocolError(f"cannot send a {type(obj).__name__} over the bridge (numbers, strings, lists, "
                        f"tuples, str-keyed dicts and numeric numpy arrays only)")


def encode(obj, region: SharedRegion | None = None) -> tuple[bytes, list]:
    """(prefix + header bytes, payload chunks) of one message; chunks are bytes or array memoryviews.

    Arrays that lie inside `region` (shared memory both sides have mapped) travel by reference: their
    meta says {"shm": 1, "offset": <byte offset in the region>} and no payload bytes are sent.
    """
    arrays: list = []
    body = _encode(obj, arrays)
    metas, chunks, offset = [], [], 0
    for a in arrays:
        at = region.offset_of(a) if region is not None else None
        if at is not None:
            metas.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": at, "shm": 1})
            continue
        pad = -offset % ALIGN
        if pad:
            chunks.append(bytes(pad))
            offset += pad
        metas.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        if a.nbytes:
            chunks.append(memoryview(a.reshape(-1)).cast("B"))
        offset += a.nbytes
    header = json.dumps({"body": body, "buffers": metas}, separators=(",", ":")).encode("utf-8")
    return PREFIX.pack(MAGIC, len(header), offset) + header, chunks


def _decode(obj, arrays: list):
    if isinstance(obj, dict):
        if len(obj) == 1 and "$nd" in obj:
            return arrays[obj["$nd"]]
        if len(obj) == 1 and "$tuple" in obj:
            return tuple(_decode(v, arrays) for v in obj["$tuple"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def decode(header: bytes, payload, region: SharedRegion | None = None) -> object:
    """Inverse of `encode`: arrays are writable views into `payload` (a fresh buffer per message) or,
    for those sent by reference, into `region`."""
    try:
        meta = json.loads(header.decode("utf-8"))
        arrays = []
        for m in meta["buffers"]:
            dt = np.dtype(m["dtype"])
            if dt.kind not in ARRAY_KINDS:
                raise ProtocolError(f"refusing an array of dtype {dt}")
            shape = tuple(int(s) for s in m["shape"])
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            offset = int(m["offset"])
            src = payload
            if m.get("shm"):
                if region is None:
                    raise ProtocolError("array in shared memory, but no shared memory is attached")
                src = region.mm
            if offset < 0 or offset + count * dt.itemsize > len(src):
                raise ProtocolError("array outside the payload")
            arrays.append(np.frombuffer(src, dtype=dt, count=count, offset=offset).reshape(shape))
        return _decode(meta["body"], arrays)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed bridge message ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------------------
# Shared memory for camera images (a file in /dev/shm, mapped by both sides; Linux)
# ----------------------------------------------------------------------------------------------------
SHM_DIR = "/dev/shm"
SHM_PREFIX = "vlmad_bridge_"  # the server maps only files of this name in SHM_DIR


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class SharedRegion:
    """A shared, read-write memory region backed by a file in /dev/shm (Python 3.7: no shared_memory).

    The client creates it, the server maps the same file by name and unlinks it at once, so the memory
    is freed when both sides have unmapped it (a crash leaks nothing once the server has attached).
    """

    def __init__(self, path: str, size: int, create: bool) -> None:
        name = os.path.basename(path)
        if os.path.dirname(os.path.abspath(path)) != SHM_DIR or not name.startswith(SHM_PREFIX):
            raise BridgeError(f"refusing shared memory file {path!r} (only {SHM_DIR}/{SHM_PREFIX}*)")
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size < size:
                raise BridgeError(f"shared memory file {path} is smaller than announced ({size} B)")
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path, self.size = path, size
        self.array = np.frombuffer(self.mm, dtype=np.uint8)
        self.base = self.array.__array_interface__["data"][0]

    @classmethod
    def create(cls, size: int) -> SharedRegion:
        name = f"{SHM_PREFIX}{os.getpid()}_{os.urandom(6).hex()}"
        return cls(os.path.join(SHM_DIR, name), size, create=True)

    def view(self, offset: int, shape: tuple, dtype=np.uint8) -> np.ndarray:
        """A writable array at byte `offset` of the region."""
        count = int(np.prod(shape, dtype=np.int64))
        return self.array[offset: offset + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def offset_of(self, a: np.ndarray):
        """Byte offset of a C-contiguous array lying inside the region, else None."""
        if self.array is None or not a.flags.c_contiguous or a.nbytes == 0:
            return None
        off = a.__array_interface__["data"][0] - self.base
        return off if 0 <= off and off + a.nbytes <= self.size else None

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def close(self) -> None:
        self.array = None
        try:
            self.mm.close()
        except (BufferError, ValueError):  # arrays still point into it: the GC unmaps it later
            pass


# ----------------------------------------------------------------------------------------------------
# Sending and receiving with a deadline (every call is bounded)
# ----------------------------------------------------------------------------------------------------
def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BridgeTimeout(f"timed out {what}")
    return left


def send_message(sock: socket.socket, obj, timeout: float, region: SharedRegion | None = None) -> None:
    """Send one message; BridgeTimeout / PeerGone when it cannot be delivered within `timeout` s."""
    head, chunks = encode(obj, region)
    send_frame(sock, head, chunks, timeout)


def send_frame(sock: socket.socket, head: bytes, chunks: list, timeout: float) -> None:
    """Send an `encode`d message (split so a caller can tell encoding errors from transport errors)."""
    deadline = time.monotonic() + timeout
    # small pieces travel with the header in one write; big arrays go out zero-copy from their buffers
    pending: list = []
    joined = bytearray(head)
    for c in chunks:
        if len(c) < 65536:
            joined += c
        else:
            pending.append(bytes(joined))
            pending.append(c)
            joined = bytearray()
    if joined:
        pending.append(bytes(joined))
    try:
        for piece in pending:
            view = memoryview(piece).cast("B")
            while len(view):
                sock.settimeout(_left(deadline, "sending to the other side of the bridge"))
                n = sock.send(view)
                view = view[n:]
    except socket.timeout:  # noqa: UP041 (3.7: not TimeoutError)
        raise BridgeTimeout(f"timed out after {timeout:g} s sending to the other side of the bridge") \
            from None
    except OSError as e:  # EPIPE / ECONNRESET: the peer is gone
        raise PeerGone(f"the other side of the bridge closed the connection ({e.strerror or e})") from None


def _recv_into(sock: socket.socket, view: memoryview, deadline: float, timeout: float) -> None:
    got = 0
    while got < len(view):
        try:
            sock.settimeout(_left(deadline, f"after {timeout:g} s waiting for the other side of the bridge"))
            n = sock.recv_into(view[got:])
        except socket.timeout:  # noqa: UP041 (3.7: not TimeoutError)
            raise BridgeTimeout(f"timed out after {timeout:g} s waiting for the other side of the bridge") \
                from None
        except OSError as e:
            raise PeerGone(f"the other side of the bridge closed the connection ({e.strerror or e})") \
                from None
        if n == 0:
            raise PeerGone("the other side of the bridge closed the connection")
        got += n


def recv_message(sock: socket.socket, timeout: float, region: SharedRegion | None = None) -> object:
    """Receive one message within `timeout` s (None = wait forever: only the server's idle wait)."""
    deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
    prefix = bytearray(PREFIX.size)
    _recv_into(sock, memoryview(prefix), deadline, timeout if timeout is not None else math.inf)
    magic, hlen, plen = PREFIX.unpack(bytes(prefix))
    if magic != MAGIC:
        raise ProtocolError(f"not a bridge peer (magic {bytes(magic)!r}, expected {MAGIC!r}): is another "
                            f"program listening at this address?")
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large (header {hlen} B, payload {plen} B)")
    header = bytearray(hlen)
    _recv_into(sock, memoryview(header), deadline, timeout if timeout is not None else math.inf)
    payload = np.empty(plen, dtype=np.uint8)  # fresh per message: arrays handed out stay valid
    if plen:
        _recv_into(sock, memoryview(payload), deadline, timeout if timeout is not None else math.inf)
    return decode(bytes(header), payload, region)


# ----------------------------------------------------------------------------------------------------
# Version handshake
# ----------------------------------------------------------------------------------------------------
def version_tuple(v: str) -> tuple:
    out = []
    for part in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def handshake_problem(client_protocol: int, client_project: str, server_protocol: int,
                      server_project: str) -> str | None:
    """None when the pair may talk, else a message that says which side to update and how."""
    if client_protocol == server_protocol and client_project == server_project:
        return None
    older_client = (client_protocol, version_tuple(client_project)) < (server_protocol,
                                                                        version_tuple(server_project))
    pair = (f"3.7-side agent: bridge protocol {client_protocol}, project {client_project}; driving server: "
            f"protocol {server_protocol}, project {server_project}")
    if older_client:
        return (f"bridge version mismatch ({pair}): update the 3.7 side - point the leaderboard's --agent at "
                f"carla_eval/bridge/py37_agent.py of the project the server runs from (or copy py37_agent.py "
                f"and protocol.py from that checkout, version {server_project}); see docs/bridge.md")
    return (f"bridge version mismatch ({pair}): update the driving server - install project "
            f"{client_project} in the server's Python (the checkout the 3.7-side agent comes from: "
            f"`pip install -e .` there); see docs/bridge.md")


# ----------------------------------------------------------------------------------------------------
# Images: numpy-only resizing (the 3.7 side has no OpenCV)
# ----------------------------------------------------------------------------------------------------
def _linear_taps(n_in: int, n_out: int) -> tuple:
    """OpenCV INTER_LINEAR taps: source index pair and weight of the second tap, half-pixel centres."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    frac[i0 < 0] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    frac[i0 >= n_in - 1] = 0.0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, frac


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


class Resizer:
    """Resizes uint8 images of one shape to (width, height) with numpy only, reusing its work buffers.

    "bilinear": separable 2-tap filter at OpenCV INTER_LINEAR's sample positions (no antialiasing, like
    cv2.resize), fixed-point weights rounded once at the end: within 1 grey level of cv2. The weights are
    in 1/16 when that is exact (every VAD scale: x0.8, x0.4, x0.1 of 1600x900), so all arithmetic stays
    in uint16; other scales use 1/256 weights and uint32. "nearest": the source pixel whose cell holds the
    output pixel centre, which is always the heavier of the two bilinear taps (rows copied, 4-byte pixels
    gathered as one uint32): a few grey levels off bilinear on edges, several times cheaper.

    Buffers are allocated once per shape: fresh multi-MB temporaries per call cost more in page faults
    than the arithmetic itself (measured: 30 ms vs 5 ms for 1600x900 -> 1280x720).
    """

    def __init__(self, shape: tuple, width: int, height: int, method: str = "bilinear") -> None:
        if method not in RESIZE_METHODS:
            raise ValueError(f"resize method {method!r}; expected one of {RESIZE_METHODS}")
        if len(shape) not in (2, 3):
            raise ValueError(f"Resizer needs an (H, W) or (H, W, C) image shape, got {shape}")
        self.shape, self.width, self.height, self.method = tuple(shape), int(width), int(height), method
        h, w = self.shape[:2]
        tail = self.shape[2:]
        self.out_shape = (self.height, self.width) + tail
        if method == "nearest":
            self.rows, self.cols = _nearest_index(h, self.height), _nearest_index(w, self.width)
            return
        self.r0, self.r1, fy = _linear_taps(h, self.height)
        self.c0, self.c1, fx = _linear_taps(w, self.width)
        exact = all(np.allclose(f * 16, np.round(f * 16), atol=1e-9) for f in (fy, fx))
        one = 16 if exact else 256  # fixed-point 1.0 of each pass
        acc = np.uint16 if exact else np.uint32  # holds <= 255 * one * one
        self.shift = 8 if exact else 16  # log2(one * one)
        ones = (1,) * len(tail)
        wy = np.round(fy * one).astype(acc).reshape((self.height, 1) + ones)
        # horizontal weights repeated over the channels: a broadcast innermost axis is slow in numpy
        wx = np.round(fx * one).astype(acc).reshape((1, self.width) + ones) * np.ones((1, 1) + tail, acc)
        self.wy0, self.wy1, self.wx0, self.wx1 = one - wy, wy, one - wx, wx
        self.half = acc(one * one // 2)
        row_bytes = w * int(np.prod(tail, dtype=np.int64)) * np.dtype(acc).itemsize
        self.block = max(1, min(self.height, BLOCK_BYTES // max(1, row_bytes)))
        self.rows8 = np.empty((self.block, w) + tail, np.uint8)
        self.v = np.empty((self.block, w) + tail, acc)
        self.t = np.empty_like(self.v)
        self.o = np.empty((self.block, self.width) + tail, acc)
        self.t2 = np.empty_like(self.o)

    def __call__(self, img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """img (H, W[, C]) uint8 of `shape` -> (height, width[, C]) uint8 (into `out` when given)."""
        if img.shape != self.shape or img.dtype != np.uint8:
            raise ValueError(f"Resizer for uint8 {self.shape} got {img.dtype} {img.shape}")
        out = np.empty(self.out_shape, np.uint8) if out is None else out
        if self.method == "nearest":
            rows = img[self.rows]
            if img.ndim == 3 and img.shape[2] == 4:
                packed = rows.view(np.uint32).reshape(self.height, self.shape[1])
                dst = out.view(np.uint32).reshape(self.height, self.width)
                np.take(packed, self.cols, axis=1, out=dst, mode="clip")  # "clip": unbuffered
            else:
                np.take(rows, self.cols, axis=1, out=out, mode="clip")
            return out
        for a in range(0, self.height, self.block):  # row blocks: the working set stays in cache
            b = min(a + self.block, self.height)
            rows8, v, t, o, t2 = (x[: b - a] for x in (self.rows8, self.v, self.t, self.o, self.t2))
            np.take(img, self.r0[a:b], axis=0, out=rows8, mode="clip")  # "clip": unbuffered `out`
            np.multiply(rows8, self.wy0[a:b], out=v)
            np.take(img, self.r1[a:b], axis=0, out=rows8, mode="clip")
            np.multiply(rows8, self.wy1[a:b], out=t)
            v += t  # vertical pass, 1/one units
            np.take(v, self.c0, axis=1, out=o, mode="clip")
            o *= self.wx0
            np.take(v, self.c1, axis=1, out=t2, mode="clip")
            t2 *= self.wx1
            o += t2
            o += self.half
            o >>= self.shift
            np.copyto(out[a:b], o, casting="unsafe")
        return out


def resize_image(img: np.ndarray, width: int, height: int, method: str = "bilinear") -> np.ndarray:
    """(H, W[, C]) uint8 image -> (height, width[, C]) uint8 with `Resizer` (the image itself when the
    size already matches)."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return Resizer(img.shape, width, height, method)(img)
