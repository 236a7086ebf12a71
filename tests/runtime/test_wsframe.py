"""The tunnel's own binary frames, read back by the websockets library's parser (the one the peer runs)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from inlets_py.runtime.core.wsframe import PAYLOAD, RAW_CONTROL, RAW_DATA, RAW_REST, FrameReader, MaskKeys, binary_frame


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


def library_frame(opcode: Opcode, data: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """A frame as the websockets library writes it (the other end of a real connection)."""
    return Frame(opcode, data, fin).serialize(mask=mask)


@pytest.mark.parametrize("masked", [False, True])
def test_the_reader_gives_binary_payloads_and_the_rest_raw_whatever_the_read_sizes(masked: bool) -> None:
    frames = [
        library_frame(Opcode.BINARY, b"a" * 70_000, mask=masked),
        library_frame(Opcode.PING, b"ping", mask=masked),
        library_frame(Opcode.BINARY, b"", mask=masked),
        library_frame(Opcode.TEXT, b"hello", mask=masked),
        library_frame(Opcode.BINARY, b"first", mask=masked, fin=False),  # fragments are the library's
        library_frame(Opcode.CONT, b"second", mask=masked),
        library_frame(Opcode.BINARY, bytes(range(200)), mask=masked),
    ]
    expected = [(PAYLOAD, b"a" * 70_000), (RAW_CONTROL, frames[1]), (PAYLOAD, b""), (RAW_DATA, frames[3]),
                (RAW_DATA, frames[4]), (RAW_DATA, frames[5]), (PAYLOAD, bytes(range(200)))]
    stream = b"".join(frames)
    for step in (1, 2, 3, 7, 13, 1000, 65536, len(stream)):
        reader = FrameReader(masked=masked, max_size=1 << 20)
        got = [(kind, bytes(item)) for at in range(0, len(stream), step) for kind, item in reader.feed(stream[at : at + step])]
        assert got == expected, step


@pytest.mark.parametrize("bad", [
    library_frame(Opcode.BINARY, b"x", mask=False),  # a client's frame must be masked
    bytes([0xC2]) + library_frame(Opcode.BINARY, b"x", mask=True)[1:],  # RSV1: no extension was negotiated
    library_frame(Opcode.BINARY, b"x" * 101, mask=True),  # over max_size
    library_frame(Opcode.CLOSE, b"\x03\xe8", mask=True),  # the closing handshake is the library's
], ids=["unmasked", "rsv1", "too-large", "close"])  # masked frames differ per run: named, for pytest-xdist
def test_what_the_reader_cannot_vouch_for_goes_to_the_library_with_all_that_follows(bad: bytes) -> None:
    before, after = library_frame(Opcode.BINARY, b"ok", mask=True), library_frame(Opcode.BINARY, b"later", mask=True)
    reader = FrameReader(masked=True, max_size=100)
    assert [(k, bytes(i)) for k, i in reader.feed(before + bad[:1])] == [(PAYLOAD, b"ok")]
    assert [(k, bytes(i)) for k, i in reader.feed(bad[1:] + after)] == [(RAW_REST, bad + after)]
    assert reader.feed(b"more") == [(RAW_REST, b"more")]
