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
from typing import Any, Mapping

import zmq

from zdk.errors import ConfigError

ENV_SERVER_SECRET = "ZDK_CURVE_SERVER_SECRET"
ENV_SERVER_PUBLIC = "ZDK_CURVE_SERVER_PUBLIC"
ENV_CLIENT_PUBLIC = "ZDK_CURVE_CLIENT_PUBLIC"


def _check_keys(keys: Any) -> None:
    for name, value in asdict(keys).items():
        if not isinstance(value, str) or len(value) != 40:
            raise ConfigError(f"`{name}` must be a 40-character Z85 CURVE key. Received: {len(str(value))} characters",
                              field=name)


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
        _check_keys(self)

    @classmethod
    def generate(cls) -> "CurveKeys":
        if not zmq.has("curve"):
            raise ConfigError("this libzmq was built without CURVE support")
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode())

    def save(self, path: str) -> None:
        """Writes the keys as JSON to a new file only their owner can read (mode 0600).

        The file must not exist (``O_EXCL``) and a symlink at ``path`` is not followed
        (``O_NOFOLLOW``): nobody can make zdk write its secrets elsewhere, or find them already
        readable.

        Raises:
            ConfigError: naming ``curve_keys`` when the file exists or cannot be created.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.S_IRUSR | stat.S_IWUSR)
        except OSError as exc:
            raise ConfigError(f"`curve_keys` file {path!r} cannot be created (it must not exist yet): "
                              f"{exc.strerror}", field="curve_keys") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)

    @classmethod
    def load(cls, path: str) -> "CurveKeys":
        """Reads keys :meth:`save` wrote.

        Raises:
            ConfigError: naming ``curve_keys`` when the file is a symlink, is readable or writable by
                others than its owner (its secrets would be another user's to read), or is not a zdk key file.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ConfigError(f"`curve_keys` file {path!r} cannot be read (a symlink is not followed): "
                              f"{exc.strerror}", field="curve_keys") from None
        with os.fdopen(fd) as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"`curve_keys` file {path!r} must be readable by its owner only (mode 0600). "
                                  f"Received: mode {stat.S_IMODE(mode):04o}; chmod 600 it, and make new keys if "
                                  f"others may have read it", field="curve_keys")
            try:
                return cls(**json.load(fh))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ConfigError(f"`curve_keys` file {path!r} is not a zdk key file: {exc}",
                                  field="curve_keys") from None

    def server_env(self) -> dict[str, str]:
        """What a shard process needs: its key pair and the one client key it admits."""
        return {ENV_SERVER_SECRET: self.server_secret, ENV_SERVER_PUBLIC: self.server_public,
                ENV_CLIENT_PUBLIC: self.client_public}

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def client(self) -> "ClientKeys":
        """What a client needs, and all an executor gets: never the server's secret key."""
        return ClientKeys(server_public=self.server_public, client_public=self.client_public,
                          client_secret=self.client_secret)


@dataclass(frozen=True)
class ClientKeys:
    """A client's side of CURVE: the server's public key and the clients' key pair, as Z85 text.

    With these a client is admitted by the shards and encrypts its traffic; without the
    server's secret key it cannot impersonate a shard or read other clients' traffic.
    """

    server_public: str
    client_public: str
    client_secret: str

    def __post_init__(self) -> None:
        _check_keys(self)

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
