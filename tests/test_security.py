"""CURVE between clients and shards: encrypted, and only the job's client key gets in."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from zdk.ps.client import PSClient
from zdk.errors import ConfigError, DeadlineExceeded
from zdk.transports.curve import CurveKeys, is_loopback

from conftest import assert_logged


def test_keys_round_trip_through_an_owner_only_file(tmp_path):
    keys = CurveKeys.generate()
    path = str(tmp_path / "keys.json")
    keys.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert CurveKeys.load(path) == keys
    with pytest.raises(ConfigError, match="40-character Z85"):
        CurveKeys(server_public="x", server_secret=keys.server_secret, client_public=keys.client_public,
                  client_secret=keys.client_secret)


def test_secret_keys_stay_off_the_command_line(shards):
    keys = CurveKeys.generate()
    group = shards(num_shards=1, total_size=4, curve=keys)
    with open(f"/proc/{group.pids[0]}/cmdline", "rb") as fh:
        cmdline = fh.read().decode(errors="replace")
    assert keys.server_secret not in cmdline and keys.client_secret not in cmdline


def test_curve_shards_serve_clients_with_the_keys(shards):
    keys = CurveKeys.generate()
    group = shards(num_shards=2, total_size=8, curve=keys, initial=np.arange(8, dtype=np.float32))
    with PSClient(group.endpoints, worker_id=1, curve=keys) as client:
        client.hello()
        np.testing.assert_array_equal(client.pull(), np.arange(8))
        client.commit(np.ones(8, np.float32))
        np.testing.assert_array_equal(client.pull(), np.arange(8) + 1)


def test_curve_shards_ignore_plain_clients_and_strangers(shards, capfd):
    keys = CurveKeys.generate()
    group = shards(num_shards=1, total_size=4, curve=keys)
    with PSClient(group.endpoints, worker_id=1, timeout=1.0) as plain:
        with pytest.raises(DeadlineExceeded):
            plain.hello()
    other = CurveKeys.generate()  # the right server key, but a client key the shards never admitted
    stranger = CurveKeys(server_public=keys.server_public, server_secret=keys.server_secret,
                         client_public=other.client_public, client_secret=other.client_secret)
    with PSClient(group.endpoints, worker_id=1, timeout=1.0, curve=stranger) as client:
        with pytest.raises(DeadlineExceeded):
            client.hello()
    with PSClient(group.endpoints, worker_id=1, curve=keys) as client:  # still serving
        assert client.hello().total_size == 4
    assert_logged(capfd, "failed the handshake")


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True),
                                           ("::1", True), ("10.0.0.5", False), ("0.0.0.0", False)])
def test_loopback_detection(host, expected):
    assert is_loopback(host) is expected
