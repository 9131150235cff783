"""Bridge wire format: lossless round trips, refusals, malformed frames, bounded waits, addresses, resize."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time

import cv2
import numpy as np
import pytest

from carla_eval.bridge import protocol as P


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _roundtrip(obj: object) -> object:
    a, b = _pair()
    with a, b:
        # a big message does not fit the socket buffer: send from a thread as the peer would
        t = threading.Thread(target=P.send_message, args=(a, obj, 10.0))
        t.start()
        got = P.recv_message(b, 10.0)
        t.join()
    return got


def test_nested_values_and_arrays_cross_unchanged() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 160, 4), dtype=np.uint8)
    msg = {
        "cam": (7, img), "gps": (7, np.array([42.00001234567, 2.00000987654, -0.5])),
        "speed": (7, {"speed": 3.25}), "nan": math.nan, "inf": -math.inf, "none": None, "flag": True,
        "ints": [1, -2, 2**40], "u64": np.array([2**64 - 1], dtype=np.uint64), "b": np.array([True, False]),
        "f16": np.array([[1.5, -2.25]], dtype=np.float16), "scalar": np.float32(0.1),
        "empty": np.zeros((0, 3)),
        "zero_d": np.array(5, dtype=np.int16), "transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,
        "big_endian": np.arange(3, dtype=">f8"), "text": "Town05 é",
    }
    got = _roundtrip(msg)
    assert isinstance(got["cam"], tuple) and got["cam"][0] == 7
    assert got["cam"][1].dtype == np.uint8 and np.array_equal(got["cam"][1], img)
    assert got["cam"][1].flags.writeable  # agents may modify their input in place
    assert got["gps"][1].tobytes() == msg["gps"][1].tobytes()  # bit-exact floats
    assert got["speed"] == (7, {"speed": 3.25})
    assert math.isnan(got["nan"]) and got["inf"] == -math.inf and got["none"] is None and got["flag"] is True
    assert got["ints"] == [1, -2, 2**40] and got["u64"][0] == 2**64 - 1
    assert got["b"].dtype == bool and got["b"].tolist() == [True, False]
    assert got["f16"].dtype == np.float16 and got["f16"].tolist() == [[1.5, -2.25]]
    assert got["scalar"] == float(np.float32(0.1)) and type(got["scalar"]) is float
    assert got["empty"].shape == (0, 3) and got["zero_d"].shape == () and int(got["zero_d"]) == 5
    assert np.array_equal(got["transposed"], msg["transposed"])
    assert got["big_endian"].dtype == np.dtype(">f8") and got["big_endian"].tolist() == [0.0, 1.0, 2.0]
    assert got["text"] == "Town05 é"


def test_arrays_of_a_message_stay_valid_after_the_next_message() -> None:
    a, b = _pair()
    with a, b:
        P.send_message(a, {"x": np.full(10, 1, np.uint8)}, 5.0)
        first = P.recv_message(b, 5.0)
        P.send_message(a, {"x": np.full(10, 2, np.uint8)}, 5.0)
        second = P.recv_message(b, 5.0)
    assert first["x"].tolist() == [1] * 10 and second["x"].tolist() == [2] * 10


@pytest.mark.parametrize("bad, words", [
    (np.array([object()], dtype=object), "dtype"),
    (np.array([1 + 2j]), "dtype"),
    ({1: "x"}, "strings"),
    ({"$nd": 0}, "reserved"),
    (object(), "cannot send"),
    ({1, 2}, "cannot send"),
])
def test_values_that_cannot_cross_are_refused_before_sending(bad: object, words: str) -> None:
    with pytest.raises(P.ProtocolError, match=words):
        P.encode({"v": bad})


def test_no_pickle_on_the_wire() -> None:
    head, chunks = P.encode({"a": np.arange(3), "t": (1, "x")})
    text = head[P.PREFIX.size:].decode()
    assert text.startswith("{") and "pickle" not in text  # plain JSON header
    assert b"".join(bytes(c) for c in chunks)[:24] == np.arange(3).tobytes()


def test_foreign_or_corrupt_frames_fail_fast() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        with pytest.raises(P.ProtocolError, match="not a bridge peer"):
            P.recv_message(b, 2.0)
    a, b = _pair()
    with a, b:
        a.sendall(P.PREFIX.pack(P.MAGIC, P.MAX_HEADER + 1, 0))
        with pytest.raises(P.ProtocolError, match="too large"):
            P.recv_message(b, 2.0)
    header = b'{"body":{"$nd":0},"buffers":[{"dtype":"|u1","shape":[100],"offset":0}]}'
    with pytest.raises(P.ProtocolError, match="outside the payload"):
        P.decode(header, np.zeros(10, np.uint8))
    with pytest.raises(P.ProtocolError, match="refusing"):
        P.decode(b'{"body":{"$nd":0},"buffers":[{"dtype":"|O","shape":[1],"offset":0}]}',
                 np.zeros(8, np.uint8))
    with pytest.raises(P.ProtocolError, match="malformed"):
        P.decode(b'{"body": [1, 2', np.zeros(0, np.uint8))


def test_peer_gone_mid_frame_and_silent_peer_timeout() -> None:
    a, b = _pair()
    head, chunks = P.encode({"x": np.zeros(1000, np.uint8)})
    a.sendall(head)  # header promises 1000 bytes, then the peer dies
    a.close()
    with b, pytest.raises(P.PeerGone):
        P.recv_message(b, 2.0)
    a, b = _pair()
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(P.BridgeTimeout):
            P.recv_message(b, 0.3)
        assert time.monotonic() - t0 < 2.0
    a, b = _pair()
    b.close()
    with a, pytest.raises(P.PeerGone):
        P.send_message(a, {"x": np.zeros(1 << 20, np.uint8)}, 2.0)


def test_send_to_a_peer_that_does_not_read_is_bounded() -> None:
    a, b = _pair()
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(P.BridgeTimeout):
            P.send_message(a, {"x": np.zeros(64 << 20, np.uint8)}, 0.3)
        assert time.monotonic() - t0 < 2.0


def test_addresses_are_local_only() -> None:
    assert P.parse_address("unix:/tmp/b.sock") == (socket.AF_UNIX, "/tmp/b.sock")
    assert P.parse_address("tcp:127.0.0.1:2008") == (socket.AF_INET, ("127.0.0.1", 2008))
    assert P.parse_address("tcp:localhost:9") == (socket.AF_INET, ("localhost", 9))
    for bad, words in [("tcp:0.0.0.0:2008", "loopback"), ("tcp:10.1.2.3:2008", "loopback"),
                       ("tcp:127.0.0.1:x", "bad bridge address"), ("udp:1", "bad bridge address"),
                       ("unix:", "socket path"), ("unix:/" + "d" * 120, "107 bytes")]:
        with pytest.raises(P.BridgeError, match=words):
            P.parse_address(bad)


def test_connect_to_nothing_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(P.PeerGone, match="no driving server"):
        P.connect(f"unix:{tmp_path}/none.sock", 1.0)


def test_handshake_problem_names_the_side_to_update() -> None:
    assert P.handshake_problem(1, "0.1.0", 1, "0.1.0") is None
    old_client = P.handshake_problem(1, "0.1.0", 2, "0.2.0")
    assert "update the 3.7 side" in old_client and "0.2.0" in old_client
    old_server = P.handshake_problem(2, "0.2.0", 1, "0.1.0")
    assert "update the driving server" in old_server and "0.2.0" in old_server
    # same protocol, different project release: still refused, newer project decides
    assert "update the 3.7 side" in P.handshake_problem(1, "0.1.0", 1, "0.1.1")
    assert "update the driving server" in P.handshake_problem(1, "0.10.0", 1, "0.9.0")


# ---- resize ------------------------------------------------------------------------------------------

def _smooth_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.0).reshape(h, w, c)


@pytest.mark.parametrize("src, dst", [
    ((90, 160, 4), (128, 72)),  # x0.8 (VAD-Base's scale)
    ((90, 160, 4), (64, 36)),  # x0.4 (VAD-Tiny)
    ((90, 160, 4), (16, 9)),  # x0.1 (vad_nano)
    ((53, 77, 4), (41, 33)),  # a scale whose weights are not in 1/16 (uint32 path)
    ((45, 80, 3), (32, 18)),  # 3 channels
    ((45, 80), (32, 18)),  # grey
    ((20, 30, 4), (47, 31)),  # upscaling
])
def test_bilinear_matches_opencv_inter_linear_within_one_level(src: tuple, dst: tuple) -> None:
    img = _smooth_image(src[0], src[1], src[2] if len(src) == 3 else 1).reshape(src)
    ref = cv2.resize(img, dst, interpolation=cv2.INTER_LINEAR)
    out = P.resize_image(img, *dst)
    assert out.shape == ref.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.3


def test_nearest_picks_the_source_pixel_nearest_each_sample_position() -> None:
    h, w, oh, ow = 90, 160, 36, 64
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.stack([rows, cols, rows // 256, np.full_like(rows, 255)], -1).astype(np.uint8)  # pixel ids
    out = P.resize_image(img, ow, oh, "nearest")
    sy = (np.arange(oh) + 0.5) * h / oh - 0.5  # OpenCV's sample positions
    sx = (np.arange(ow) + 0.5) * w / ow - 0.5
    assert np.all(np.abs(out[:, :, 0].astype(float) - sy[:, None]) <= 0.5 + 1e-9)
    assert np.all(np.abs(out[:, :, 1].astype(float) - sx[None, :]) <= 0.5 + 1e-9)
    assert np.all(out[:, :, 3] == 255)


def test_resizer_reuses_buffers_without_mixing_images() -> None:
    a, b = _smooth_image(90, 160, 4, 1), _smooth_image(90, 160, 4, 2)
    for method in P.RESIZE_METHODS:
        r = P.Resizer(a.shape, 64, 36, method)
        out = np.empty(r.out_shape, np.uint8)
        ra = r(a, out).copy()
        rb = r(b, out)
        assert np.array_equal(ra, P.resize_image(a, 64, 36, method))
        assert np.array_equal(rb, P.resize_image(b, 64, 36, method))
    assert P.resize_image(a, 160, 90) is a  # already the right size: untouched
    with pytest.raises(ValueError, match="got"):
        P.Resizer(a.shape, 64, 36)(a[:80])
    with pytest.raises(ValueError, match="resize method"):
        P.resize_image(a, 64, 36, "cubic")


def test_prefix_layout_is_frozen() -> None:
    # the prefix and hello must never change: they are how mismatched versions talk to each other
    assert P.PREFIX.format == "!4sIQ" and P.MAGIC == b"VLMB"
    head, _ = P.encode({"op": "hello"})
    magic, hlen, plen = struct.unpack("!4sIQ", head[:16])
    assert magic == b"VLMB" and hlen == len(head) - 16 and plen == 0


def test_shared_memory_arrays_travel_by_reference() -> None:
    region = P.SharedRegion.create(4096)
    peer = P.SharedRegion(region.path, 4096, create=False)
    region.unlink()
    try:
        img = region.view(128, (8, 16, 4))
        img[:] = 7
        head, chunks = P.encode({"cam": (3, img), "gps": np.arange(3.0)}, region)
        assert sum(len(c) for c in chunks) < 64  # only the small array is in the payload
        got = P.decode(head[P.PREFIX.size:], np.frombuffer(b"".join(bytes(c) for c in chunks), np.uint8)
                       .copy(), peer)
        assert np.array_equal(got["cam"][1], img) and got["gps"].tolist() == [0.0, 1.0, 2.0]
        img[0, 0, 0] = 9  # same memory: the peer sees the writer's next tick
        assert got["cam"][1][0, 0, 0] == 9
        with pytest.raises(P.ProtocolError, match="no shared memory"):
            P.decode(head[P.PREFIX.size:], np.zeros(64, np.uint8))
    finally:
        region.close()
        peer.close()
    with pytest.raises(P.BridgeError, match="refusing shared memory"):
        P.SharedRegion("/tmp/vlmad_bridge_x", 16, create=True)
    with pytest.raises(P.BridgeError, match="refusing shared memory"):
        P.SharedRegion("/dev/shm/other_name", 16, create=True)
