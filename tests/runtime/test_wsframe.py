"""The tunnel's own binary frames, read back by the websockets library's parser (the one the peer runs)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from inlets_py.runtime.core.wsframe import (
    GROW_TO, PAYLOAD, RAW_CONTROL, RAW_DATA, RAW_REST, FrameReader, MaskKeys, binary_frame, frame_buffers,
)


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


@pytest.mark.parametrize("masked", [False, True])
def test_frame_buffers_are_the_frame_with_its_large_pieces_apart(masked: bool) -> None:
    sizes = [9, 16 * 1024, 9, 3, 100_000, 9, 16 * 1024 - 1, 9, 70_001]  # odd sizes turn the mask's offset
    pieces: list[bytes | memoryview] = [bytes([i]) * size for i, size in enumerate(sizes)]
    pieces[4] = memoryview(pieces[4])
    length = sum(sizes)
    mask = MaskKeys().next() if masked else None
    buffers = frame_buffers(pieces, length, mask)
    frame = parse(b"".join(buffers), mask=masked)  # the websockets library's own parser
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, b"".join(pieces))
    assert [len(b) for b in buffers] == [2 + 8 + (4 if masked else 0) + 9, 16 * 1024, 9 + 3, 100_000,
                                         9 + 16 * 1024 - 1 + 9, 70_001]
    if not masked:  # passed on as given, not copied
        assert buffers[1] is pieces[1] and buffers[3] is pieces[4] and buffers[5] is pieces[8]


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
    bytes([0x83]) + library_frame(Opcode.BINARY, b"x", mask=True)[1:],  # opcode 3 is reserved: "invalid opcode"
], ids=["unmasked", "rsv1", "too-large", "close", "reserved-opcode"])  # masked frames differ per run: named, for pytest-xdist
def test_what_the_reader_cannot_vouch_for_goes_to_the_library_with_all_that_follows(bad: bytes) -> None:
    before, after = library_frame(Opcode.BINARY, b"ok", mask=True), library_frame(Opcode.BINARY, b"later", mask=True)
    reader = FrameReader(masked=True, max_size=100)
    assert [(k, bytes(i)) for k, i in reader.feed(before + bad[:1])] == [(PAYLOAD, b"ok")]
    assert [(k, bytes(i)) for k, i in reader.feed(bad[1:] + after)] == [(RAW_REST, bad + after)]
    assert reader.feed(b"more") == [(RAW_REST, b"more")]


def read_into(reader: FrameReader, stream: bytes, step: int, hint: int) -> list[tuple[int, bytes | memoryview]]:
    """As a transport reads into a buffered protocol: at most ``step`` bytes a read, ``hint`` as its size hint
    (``step`` when 0), and no more than the room the reader gives."""
    out = []
    at = 0
    while at < len(stream):
        room = reader.get_buffer(hint or min(step, len(stream) - at))
        assert len(room) > 0
        count = min(len(room), step, len(stream) - at)
        room[:count] = stream[at : at + count]
        at += count
        out += reader.updated(count)
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_reads_into_the_readers_buffer_give_the_same_frames_whatever_the_sizes(masked: bool) -> None:
    frames = [library_frame(Opcode.BINARY, bytes([n]) * size, mask=masked) for n, size in
              enumerate([300_000, 5, 70_000, 0, 200_000, 126, 65_536])]
    frames.insert(3, library_frame(Opcode.PING, b"ping", mask=masked))
    stream = b"".join(frames)
    expected = [(RAW_CONTROL, frames[3]) if i == 3 else (PAYLOAD, parse(f, mask=masked).data)
                for i, f in enumerate(frames)]
    for step, hint in [(1, 0), (1000, 0), (65_536, -1), (200_000, 0), (100_000, 300_000), (len(stream), 0)]:
        reader = FrameReader(masked=masked, max_size=1 << 20)
        got = read_into(reader, stream, step, hint)
        # Checked after every read: a payload handed out is no view of the buffer the next reads write over.
        assert [(kind, bytes(item)) for kind, item in got] == expected, (step, hint)
        assert reader.capacity <= GROW_TO + 2 * 300_014  # grows by what a frame and a read need, past GROW_TO


def test_a_frame_larger_than_a_read_turns_the_reader_to_bulk_until_a_small_read_empties_it() -> None:
    big = library_frame(Opcode.BINARY, b"x" * 300_000, mask=True)
    reader = FrameReader(masked=True, max_size=1 << 20)
    assert reader.feed(library_frame(Opcode.BINARY, b"small", mask=True)) == [(PAYLOAD, b"small")]
    assert (reader.bulk, reader.capacity) == (False, 0)  # whole frames in a read: nothing is kept
    assert reader.feed(big[:100_000]) == [] and reader.bulk and reader.capacity >= len(big)
    got = read_into(reader, big[100_000:], len(big), 0)  # the rest in one read
    assert [(kind, bytes(item)) for kind, item in got] == [(PAYLOAD, b"x" * 300_000)]
    assert reader.capacity > 0  # emptied by a large read: kept for the next frame
    assert read_into(reader, library_frame(Opcode.BINARY, b"tail", mask=True), 100, 0) == [(PAYLOAD, b"tail")]
    assert (reader.bulk, reader.capacity) == (False, 0)  # emptied by a small read: idle, no buffer held
    small = library_frame(Opcode.BINARY, b"y" * 1000, mask=True)
    assert reader.feed(small[:10]) == [] and not reader.bulk  # a small frame waits without turning it to bulk
    assert reader.feed(small[10:]) == [(PAYLOAD, b"y" * 1000)] and reader.capacity == 0
