"""Random and mutated input for the control plane's I/O-free cores (``wsframe.FrameReader``, ``Multiplexer``): every
input ends in frames handed out or ``ProtocolError``, and no buffer or queue grows past its bound."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import apply_mask

from inlets_py.runtime.core.mux import (
    HEADER, MAX_WINDOW, DataReceived, Multiplexer, ProtocolError, StreamError,
)
from inlets_py.runtime.core.muxqueue import _DATAGRAM as DATAGRAM
from inlets_py.runtime.core.wsframe import GROW_TO, PAYLOAD, RAW_CONTROL, RAW_DATA, RAW_REST, READ_ROOM, FrameReader


def ws_frame(opcode: int, data: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """A frame as RFC 6455 lays it out, whatever its opcode, bits and size (the library's ``Frame`` refuses some)."""
    length = len(data)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if mask else 0
    head += (bytes([bit | length]) if length < 126 else bytes([bit | 126]) + struct.pack("!H", length) if length < 65536
             else bytes([bit | 127]) + struct.pack("!Q", length))
    key = os.urandom(4)
    return head + key + apply_mask(data, key) if mask else head + data


frames = st.lists(st.one_of(
    st.builds(lambda d, m: ws_frame(2, d, mask=m), st.binary(max_size=300), st.booleans()),
    st.builds(lambda n: ws_frame(2, bytes(n)), st.integers(0, 300_000)),  # spans reads, or over max_size
    st.builds(lambda d: ws_frame(9, d), st.binary(max_size=125)),
    st.builds(lambda op, d, fin: ws_frame(op, d, fin=fin), st.sampled_from([0, 1, 2, 8, 9, 10, 3, 7, 11, 15]),
              st.binary(max_size=130), st.booleans()),
    st.builds(lambda d, r: ws_frame(2, d, rsv=r), st.binary(max_size=50), st.integers(1, 7)),
    st.binary(min_size=1, max_size=30),  # garbage: any header, any length
), max_size=12)


def joined(items: list) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for kind, item in items:
        if kind == RAW_REST and out and out[-1][0] == RAW_REST:
            out[-1] = (RAW_REST, out[-1][1] + bytes(item))
        else:
            out.append((kind, bytes(item)))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames, st.lists(st.integers(1, 400_000), min_size=1, max_size=20), st.sampled_from(["feed", "buffer", "both"]),
       st.integers(100, 1 << 20))
def test_the_reader_hands_out_the_same_frames_whatever_the_reads_and_holds_a_frame_and_a_read_at_most(
    sent: list[bytes], reads: list[int], way: str, limit: int
) -> None:
    stream = b"".join(sent)
    expected = joined(FrameReader(masked=True, max_size=limit).feed(stream))
    for kind, item in expected:  # raw frames are only those the library handles as they are
        assert kind in (PAYLOAD, RAW_REST) or (item[0] & 0x0F) in {RAW_DATA: (0, 1, 2), RAW_CONTROL: (9, 10)}[kind]
    reader = FrameReader(masked=True, max_size=limit)
    got: list = []
    at = turn = 0
    while at < len(stream):
        step = reads[turn % len(reads)]
        turn += 1
        if way == "buffer" or (way == "both" and turn % 2):
            room = reader.get_buffer(step)
            count = min(len(room), step, len(stream) - at)
            assert count > 0
            room[:count] = stream[at : at + count]
            got += reader.updated(count)
        else:
            count = min(step, len(stream) - at)
            got += reader.feed(stream[at : at + count])
        at += count
        assert reader.capacity <= max(GROW_TO, 2 * (limit + 14)) + 2 * max(step, READ_ROOM)
    assert joined(got) == expected


wire = st.tuples(
    st.sampled_from([1, 2, 3, 4, 5, 6, 0, 7, 255]),  # the six types, and unknown ones
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 101, 2**32 - 2, 2**32 - 1]),  # live, gone, never opened
    st.one_of(
        st.binary(max_size=40),
        st.builds(struct.Struct("!I").pack, st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 1 << 20])),
        st.builds(lambda code, reason: struct.pack("!H", code) + reason, st.integers(0, 65535), st.binary(max_size=20)),
        st.builds(lambda n: b"x" * n, st.integers(0, 70_000)),  # beyond the window, the frame size
        st.sampled_from([b"tcp:80", b"\xff\xfe"]),
    ),
)
steps = st.lists(st.one_of(
    st.tuples(st.just("receive"), st.lists(wire, min_size=1, max_size=4)),
    st.tuples(st.sampled_from(["open", "send", "datagram", "eof", "reset", "consume", "ack", "write", "goaway"]),
              st.integers(0, 100_000)),
), max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps, st.booleans(), st.booleans())
def test_a_hostile_peer_gets_events_or_protocol_error_and_the_books_stay_bounded(
    steps: list, budgeted: bool, client: bool
) -> None:
    """Frames of any type for any stream interleaved with the local side's calls, never writing what is queued:
    only ``ProtocolError`` comes out, and credit, stream counts and the control backlog keep their bounds."""
    mux = Multiplexer(client=client, recv_window=64 * 1024, send_window=64 * 1024, max_frame=64 * 1024, max_streams=3,
                      initial_recv_window=16 * 1024 if budgeted else None, recv_budget=64 * 1024 if budgeted else None,
                      max_control_backlog=4096)
    for step, arg in steps:
        live = sorted(mux._streams)
        sid = live[arg % len(live)] if isinstance(arg, int) and live else 1
        try:
            if step == "receive":
                try:
                    events = mux.receive(b"".join(HEADER.pack(t, s, len(p)) + p for t, s, p in arg))
                except ProtocolError:
                    return
                assert all(len(e.data) <= mux.max_frame for e in events if isinstance(e, DataReceived))
            elif step == "open":
                mux.open_stream("tcp:1")
            elif step == "send":
                mux.send_data(sid, b"y" * arg)
            elif step == "datagram":  # whole or nothing: what went is one frame of it, all of it
                before = mux.buffered
                went = mux.send_datagram(sid, b"d" * arg)
                assert mux.buffered - before == (HEADER.size + arg if went else 0)
            elif step == "eof":
                mux.send_eof(sid)
            elif step == "reset":
                mux.reset_stream(sid)
            elif step == "consume":
                mux.consumed(sid, arg)
            elif step == "ack":
                mux.acknowledge(sid)
            elif step == "write":
                mux.data_to_send(1)
            else:
                mux.go_away("x")
        except StreamError:
            pass
        streams = mux._streams
        assert mux.grown == sum(s.recv_limit - mux.initial_recv_window for s in streams.values())
        assert 0 <= mux.grown <= (64 * 1024 if budgeted else mux.grown)
        assert 0 <= mux._peer_open == sum(1 for s in streams if s % 2 == mux._peer_parity) <= 3
        for s in streams.values():
            assert 0 <= s.recv_window <= MAX_WINDOW and 0 <= s.send_window <= MAX_WINDOW and s.held >= 0
        assert mux.buffered == sum(len(h) + len(p) for _, h, p in mux._out)
        assert mux.control_buffered == sum(len(h) + len(p) for t, h, p in mux._out if t not in (1, 2, DATAGRAM))
        assert mux.datagram_buffered == sum(len(h) + len(p) for t, h, p in mux._out if t == DATAGRAM)
        assert mux.control_buffered <= 4096 + 2048 or mux.backlogged  # past the bound, the peer is not read
