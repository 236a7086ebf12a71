"""inlets runtime: TCP and HTTP tunnels multiplexed over one authenticated TLS websocket."""

__version__ = "0.1.0"

#: Version of the wire protocol (handshake and frames). Bumped on any incompatible change.
PROTOCOL_VERSION = 1
