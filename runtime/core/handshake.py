"""The first exchange on a tunnel websocket: who speaks which protocol, serving what.

The client sends one text message, ``hello``; the server answers ``welcome`` or
closes with a 4xxx code and a reason the client shows, escaped (``client/diagnose.printable``).
Pure functions: the checks are unit-tested without a socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .. import PROTOCOL_VERSION, __version__
from .jsonload import RepeatedKey, loads as load_json

#: The control plane's websocket path (after the URL's own path prefix).
CONNECT_PATH = "/connect"
MAX_HELLO = 64 * 1024
MAX_SERVICES = 1024
#: The server logs it (client=...): a newline or a space in it could forge a log line or a field.
_CLIENT_ID = re.compile(r"[!-~]{0,128}")

# Close codes for a refused handshake. The client treats them as final: retrying
# with the same configuration cannot succeed.
CLOSE_BAD_HELLO = 4000
CLOSE_PROTOCOL_VERSION = 4001
CLOSE_WRONG_MODE = 4002
CLOSE_SERVICE_REFUSED = 4003
FATAL_CLOSE_CODES = range(4000, 4100)
#: The server closes a live session whose token it no longer accepts (SIGHUP): policy violation.
CLOSE_TOKEN_REVOKED = 1008


class HandshakeError(Exception):
    """The peer's handshake is unacceptable; ``code`` is the websocket close code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Hello:
    mode: str
    services: list[str]
    client_id: str
    window: int
    protocol: int = PROTOCOL_VERSION
    version: str = __version__
    extra: dict = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps(
            {
                "type": "hello",
                "protocol": self.protocol,
                "version": self.version,
                "mode": self.mode,
                "client_id": self.client_id,
                "services": self.services,
                "window": self.window,
                **({"extra": self.extra} if self.extra else {}),
            }
        )


@dataclass(frozen=True)
class Welcome:
    services: list[str]
    window: int
    max_frame: int
    protocol: int = PROTOCOL_VERSION
    version: str = __version__

    def encode(self) -> str:
        return json.dumps(
            {
                "type": "welcome",
                "protocol": self.protocol,
                "version": self.version,
                "services": self.services,
                "window": self.window,
                "max_frame": self.max_frame,
            }
        )


def _load(message: str | bytes, kind: str) -> dict:
    if not isinstance(message, str):
        raise HandshakeError(CLOSE_BAD_HELLO, f"expected a text {kind} message")
    if len(message) > MAX_HELLO:
        raise HandshakeError(CLOSE_BAD_HELLO, f"{kind} message too large")
    try:
        data = load_json(message)
    except RepeatedKey as exc:  # read one way here, another by a parser that keeps the first
        repeated = f"{kind} names {exc.shown} twice in one object: send each key once"
        raise HandshakeError(CLOSE_BAD_HELLO, repeated) from None
    except RecursionError:  # nesting deeper than the parser's stack (a few thousand "[" fit in MAX_HELLO)
        raise HandshakeError(CLOSE_BAD_HELLO, f"{kind} is nested too deeply") from None
    except ValueError:
        raise HandshakeError(CLOSE_BAD_HELLO, f"{kind} is not JSON") from None
    if not isinstance(data, dict) or data.get("type") != kind:
        raise HandshakeError(CLOSE_BAD_HELLO, f"expected a {kind} message")
    try:  # "\ud800" escapes decode to lone surrogates, which every later encode() (close reason, header) raised on
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise HandshakeError(CLOSE_BAD_HELLO, f"{kind} holds text that is not Unicode (a lone surrogate)") from None
    except RecursionError:  # as deep as json.loads allows, a frame or two deeper
        raise HandshakeError(CLOSE_BAD_HELLO, f"{kind} is nested too deeply") from None
    protocol = data.get("protocol")
    if type(protocol) is not int or protocol != PROTOCOL_VERSION:  # true and 1.0 equal 1 too
        raise HandshakeError(
            CLOSE_PROTOCOL_VERSION,
            f"peer speaks tunnel protocol {protocol!r} (version {data.get('version', '?')}), "
            f"this side speaks {PROTOCOL_VERSION} (version {__version__}); upgrade the older side",
        )
    return data


def _window(data: dict) -> int:
    window = data.get("window")
    if not isinstance(window, int) or not 16 * 1024 <= window <= 2**31 - 1:
        raise HandshakeError(CLOSE_BAD_HELLO, "window out of range")
    return window


def _service_names(services: object) -> bool:
    """A list of at most ``MAX_SERVICES`` names (ports or hosts as text), as hello and welcome carry them."""
    return (isinstance(services, list) and len(services) <= MAX_SERVICES
            and all(isinstance(s, str) and 0 < len(s) <= 256 for s in services))


def parse_hello(message: str | bytes) -> Hello:
    data = _load(message, "hello")
    mode, services, client_id = data.get("mode"), data.get("services"), data.get("client_id", "")
    if not isinstance(mode, str) or not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise HandshakeError(CLOSE_BAD_HELLO, "hello needs a mode and a short client_id (visible ASCII, no spaces)")
    if not _service_names(services):
        raise HandshakeError(CLOSE_BAD_HELLO, f"services must be a list of at most {MAX_SERVICES} names")
    seen: set[str] = set()
    for service in services:  # a client's services are a mapping's keys: no client repeats one
        if service in seen:
            raise HandshakeError(CLOSE_BAD_HELLO, f"hello lists the service {service} twice: list each service once")
        seen.add(service)
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise HandshakeError(CLOSE_BAD_HELLO, "extra must be an object")
    return Hello(mode, services, client_id, _window(data), data["protocol"], str(data.get("version", "")), extra)


def client_max_streams(hello: Hello, limit: int) -> int:
    """The streams the client takes from the server at once: its --max-streams, sent in the hello, or ``limit``
    (the server's own) when higher or not sent (an older client). A client at it is tried last for a new user,
    so another client takes the user instead of this one resetting them."""
    value = hello.extra.get("max_streams")
    if type(value) is int and 1 <= value < limit:
        return value
    return limit


def parse_welcome(message: str | bytes) -> Welcome:
    data = _load(message, "welcome")
    services, max_frame = data.get("services"), data.get("max_frame")
    if not _service_names(services) or not isinstance(max_frame, int) or not 1024 <= max_frame <= 16 * 2**20:
        raise HandshakeError(CLOSE_BAD_HELLO, "malformed welcome")
    return Welcome(services, _window(data), max_frame, data["protocol"], str(data.get("version", "")))
