"""Transports move a header frame plus data frames between workers and shards."""

from zdk.transports.base import ClientTransport, ServerTransport
from zdk.transports.zmq import ZmqDealerTransport, ZmqRouterTransport, check_endpoint

__all__ = ["ClientTransport", "ServerTransport", "ZmqDealerTransport", "ZmqRouterTransport", "check_endpoint"]
