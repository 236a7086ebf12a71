"""The PROXY protocol (HAProxy's, v1 text and v2 binary), without I/O.

Two uses: the server prepends a header to a stream so the upstream learns the real
source address (``--proxy-protocol``), and the server reads one from a load
balancer in front of its data plane (``--lb-proxy-protocol``).
Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..core.hosts import unmapped_address
from ..core.ports import parse_port

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
_V2_HEADER = struct.Struct("!12sBBH")

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header: the connection is dropped."""


@dataclass(frozen=True)
class ProxyHeader:
    source: Address | None  # None: LOCAL / UNKNOWN (health checks from the balancer itself)
    destination: Address | None
    length: int  # bytes of the header, to strip from the stream


def encode(version: str, source: Address, destination: Address) -> bytes:
    """A header that tells the upstream this connection came from ``source`` to ``destination``.

    Both addresses are of one family, as the specification wants: IPv4 when both are (``::ffff:10.9.9.9`` taken as
    10.9.9.9), else IPv6, an IPv4 one written IPv4-mapped (a balancer's IPv4 user reaching its IPv6 address):
    v1 ``TCP6 ::ffff:a09:909 2001:db8::1``, in the hex groups the specification's TCP6 addresses are made of."""
    src, dst = unmapped_address(ipaddress.ip_address(source[0])), unmapped_address(ipaddress.ip_address(destination[0]))
    if src.version != dst.version:  # UNKNOWN / UNSPEC lost the user's address
        src, dst = _mapped(src), _mapped(dst)
    if version == "v1":
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {_v1_text(src)} {_v1_text(dst)} {source[1]} {destination[1]}\r\n".encode()
    if version == "v2":
        family = 0x11 if src.version == 4 else 0x21
        body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
        return _V2_HEADER.pack(V2_SIGNATURE, 0x21, family, len(body)) + body
    raise ValueError(f"PROXY protocol version must be v1 or v2, got {version!r}")


def _mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """``address`` as IPv6: an IPv4 one as ``::ffff:a.b.c.d``."""
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(0xFFFF << 32 | int(address))


def _v1_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as a v1 header writes it: an IPv6 one in hex groups only, as the specification defines them
    (Python 3.13 writes an IPv4-mapped one ``::ffff:10.9.9.9``)."""
    if isinstance(address, ipaddress.IPv4Address) or address.ipv4_mapped is None:
        return str(address)
    low = int(address) & 0xFFFFFFFF
    return f"::ffff:{low >> 16:x}:{low & 0xFFFF:x}"


def parse(data: bytes, version: str) -> ProxyHeader | None:
    """Parse a header at the start of ``data``; None while more bytes are needed."""
    if version == "v1":
        return _parse_v1(data)
    if version == "v2":
        return _parse_v2(data)
    raise ValueError(f"PROXY protocol version must be v1 or v2, got {version!r}")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not b"PROXY "[: len(data)] == data[:6]:
        raise ProxyProtocolError("expected a PROXY v1 header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        return None
    try:
        parts = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    try:
        src, dst = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
    except ValueError:
        raise ProxyProtocolError("bad address in PROXY v1 header") from None
    sport, dport = parse_port(parts[4], lowest=0), parse_port(parts[5], lowest=0)
    family = 4 if parts[1] == "TCP4" else 6
    # Both addresses of the header's family, neither with a scope zone (%eth0), which the spec's forms lack: one
    # believed here was passed on, an UNSPEC header or one the upstream refuses, the user's address lost.
    if (src.version != family or dst.version != family or "%" in parts[2] + parts[3]
            or sport is None or dport is None):
        raise ProxyProtocolError("bad address in PROXY v1 header")
    return ProxyHeader((str(src), sport), (str(dst), dport), end + 2)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if data[:12] != V2_SIGNATURE[: len(data)]:
        raise ProxyProtocolError("expected a PROXY v2 header")
    if len(data) < _V2_HEADER.size:
        return None
    _, ver_cmd, family, length = _V2_HEADER.unpack_from(data)
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF not in (0, 1):
        raise ProxyProtocolError("unsupported PROXY v2 version or command")
    total = _V2_HEADER.size + length
    if len(data) < total:
        return None
    body = data[_V2_HEADER.size : total]
    if ver_cmd & 0xF == 0:  # LOCAL: the family is ignored
        return ProxyHeader(None, None, total)
    if family >> 4 > 3 or family & 0xF > 2:  # values the specification says receivers must reject
        raise ProxyProtocolError("unsupported PROXY v2 address family or transport")
    if family & 0xF == 2:  # DGRAM: a UDP datagram's addresses are not this TCP connection's (was taken as TCP)
        raise ProxyProtocolError("PROXY v2 header for a datagram (UDP) connection on a TCP port")
    if family not in (0x11, 0x21):  # UNSPEC, UNIX: no address to use
        return ProxyHeader(None, None, total)
    size = 4 if family >> 4 == 1 else 16
    if len(body) < 2 * size + 4:
        raise ProxyProtocolError("PROXY v2 address block too short")
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader((str(src), sport), (str(dst), dport), total)
