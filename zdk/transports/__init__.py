"""Transports move a header frame plus data frames between workers and shards."""

from zdk.transports.base import ClientConnector, ClientTransport, ServerTransport
from zdk.transports.zmq import ZmqConnector, ZmqDealerTransport, ZmqRouterTransport, check_endpoint

__all__ = ["ClientConnector", "ClientTransport", "ServerTransport", "ZmqConnector", "ZmqDealerTransport",
           "ZmqRouterTransport", "check_endpoint"]
