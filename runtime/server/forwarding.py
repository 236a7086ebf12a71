"""Local forwarding, the server's side: may this client reach that target?

The client listens on ``--local LOCAL_PORT:HOST:REMOTE_PORT`` (client/local_forward.py) and
opens a stream ``forward:HOST:REMOTE_PORT`` per connection; the server dials HOST:REMOTE_PORT
only when started with ``--client-forwarding`` and only if ``--client-forwarding-allow``
permits that target, because otherwise a client could reach anything on the server's
network. The server checks every stream, whatever the handshake said: against that list, and
against the targets this client declared in its handshake (its ``--local`` ones).
"""

from __future__ import annotations

import logging

from ..core.logs import logfmt
from ..core.allowlist import TargetRule
from ..core.bridge import dial
from ..core.eyeballs import connect_socket, is_name
from ..core.handshake import CLOSE_SERVICE_REFUSED, HandshakeError, Hello
from ..core.hosts import authority
from ..core.mux import ResetCode
from ..core.services import FORWARD_PREFIX, parse_target
from ..core.channel import Channel

log = logging.getLogger("inlets.forward")


class ForwardingPolicy:
    """The server's side: may this client reach that target?"""

    def __init__(self, enabled: bool, rules: list[TargetRule]) -> None:
        self.enabled = enabled
        self.rules = rules

    def refusal(self, target: str) -> str | None:
        """Why ``target`` is refused, or None when it is allowed."""
        if not self.enabled:
            return "client forwarding is disabled on this server (start it with --client-forwarding)"
        try:
            host, port = parse_target(target)
        except ValueError as exc:
            return str(exc)
        if not any(rule.matches(host, port) for rule in self.rules):
            return f"{authority(host, port)} is not in the server's --client-forwarding-allow list"
        return None

    def check_hello(self, hello: Hello) -> None:
        forwards = hello.extra.get("forwards", [])
        if not isinstance(forwards, list) or not all(isinstance(f, str) for f in forwards):
            raise HandshakeError(CLOSE_SERVICE_REFUSED, "forwards must be a list of targets")
        for target in forwards:
            reason = self.refusal(target)
            if reason is not None:
                raise HandshakeError(CLOSE_SERVICE_REFUSED, reason)

    def on_stream(self, channel: Channel, declared: frozenset[str]) -> None:
        """Dial a stream's target if it is allowed and one of the targets the client ``declared`` in its
        handshake: the allow-list bounds every client, the handshake what this one asked for."""
        reason = self.refusal(channel.target)
        if reason is None and channel.target not in declared:
            reason = f"{channel.target[len(FORWARD_PREFIX):]} is not one of the --local targets this client connected with"
        if reason is not None:
            log.warning("event=forward_refused target=%s reason=%s", logfmt(channel.target), logfmt(reason))
            channel.reset(ResetCode.NOT_ALLOWED, reason)
            return
        host, port = parse_target(channel.target)  # a name's addresses raced, as the client's upstreams are: in turn,
        dial(channel, host, port, opener=connect_socket if is_name(host) else None)  # a dead one took the dial's 10 s
