"""Authenticated peer links between validators (see ``network`` and ``handshake``)."""

from node.transport.framing import FrameError
from node.transport.handshake import PROTOCOL, HandshakeError
from node.transport.network import STAT_KEYS, PeerNetwork

__all__ = ["PROTOCOL", "STAT_KEYS", "FrameError", "HandshakeError", "PeerNetwork"]
