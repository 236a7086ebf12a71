"""The tunnel's own binary frames, read back by the websockets library's parser (the one the peer runs)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from inlets_py.runtime.core.wsframe import MaskKeys, binary_frame


def parse(data: bytes, *, mask: bool) -> Frame:
    """As a server (mask=True) or client (mask=False) reads a frame: the library refuses the wrong masking."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("frame incomplete")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
@pytest.mark.parametrize("masked", [False, True])
def test_every_length_encoding_parses_back_to_the_joined_pieces(length: int, masked: bool) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    pieces = [payload[: length // 3], memoryview(payload)[length // 3 :]]
    mask = MaskKeys().next() if masked else None
    data = binary_frame(pieces, length, mask)
    frame = parse(data, mask=masked)
    assert (frame.opcode, frame.fin, frame.rsv1, frame.data) == (Opcode.BINARY, True, False, payload)
    header = 2 + (0 if length < 126 else 2 if length < 65536 else 8) + (4 if masked else 0)
    assert len(data) == header + length  # the shortest length form (RFC 6455 5.2)


def test_masking_keys_come_from_a_pool_refilled_from_the_os() -> None:
    keys = MaskKeys()
    drawn = [keys.next() for _ in range(MaskKeys.POOL // 4 * 2 + 1)]  # two refills and one more
    assert all(len(key) == 4 for key in drawn)
    assert len(set(drawn)) > len(drawn) * 0.99  # 32 random bits each: repeats are rare
    assert drawn[: MaskKeys.POOL // 4] != drawn[MaskKeys.POOL // 4 : MaskKeys.POOL // 2]
