"""CURVE encryption and client authentication between workers and shards.

On loopback zdk talks in the clear. Off loopback, shards can require CURVE (ZeroMQ's
elliptic-curve encryption): traffic is encrypted, and a ZAP authenticator admits only
clients holding the job's client key. Secret keys reach shard processes through their
environment, never their command line.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from typing import Mapping

import zmq

from zdk.errors import ConfigError

ENV_SERVER_SECRET = "ZDK_CURVE_SERVER_SECRET"
ENV_SERVER_PUBLIC = "ZDK_CURVE_SERVER_PUBLIC"
ENV_CLIENT_PUBLIC = "ZDK_CURVE_CLIENT_PUBLIC"


@dataclass(frozen=True)
class CurveKeys:
    """The key pairs of one parameter server and its clients, as Z85 text.

    Args:
        server_public, server_secret: the shards' key pair.
        client_public, client_secret: the one key pair every client of this server uses.
    """

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, str) or len(value) != 40:
                raise ConfigError(f"`{name}` must be a 40-character Z85 CURVE key. Received: {len(str(value))} characters",
                                  field=name)

    @classmethod
    def generate(cls) -> "CurveKeys":
        if not zmq.has("curve"):
            raise ConfigError("this libzmq was built without CURVE support")
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode())

    def save(self, path: str) -> None:
        """Writes the keys as JSON readable only by their owner (mode 0600)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)

    @classmethod
    def load(cls, path: str) -> "CurveKeys":
        try:
            with open(path) as fh:
                return cls(**json.load(fh))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"`curve_keys` file {path!r} is not a zdk key file: {exc}", field="curve_keys") from None

    def server_env(self) -> dict[str, str]:
        """What a shard process needs: its key pair and the one client key it admits."""
        return {ENV_SERVER_SECRET: self.server_secret, ENV_SERVER_PUBLIC: self.server_public,
                ENV_CLIENT_PUBLIC: self.client_public}

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class ServerCurve:
    """A shard's side of CURVE: its key pair and the client keys it admits."""

    public: str
    secret: str
    allowed_clients: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ServerCurve | None":
        if ENV_SERVER_SECRET not in env:
            return None
        return cls(env[ENV_SERVER_PUBLIC], env[ENV_SERVER_SECRET], frozenset({env[ENV_CLIENT_PUBLIC]}))


class AllowedKeys:
    """A ZAP credentials provider admitting a fixed set of client public keys."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = {k.encode() for k in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
