"""CURVE keys: executors get only the client's side, and key files are private."""

from __future__ import annotations

import os

import pytest

from zdk.errors import ConfigError
from zdk.transports.curve import ClientKeys, CurveKeys


def test_the_client_side_of_the_keys_holds_no_server_secret():
    keys = CurveKeys.generate()
    client = keys.client()
    assert isinstance(client, ClientKeys) and not hasattr(client, "server_secret")
    assert keys.server_secret not in str(client.to_dict())
    assert (client.server_public, client.client_public, client.client_secret) == (
        keys.server_public, keys.client_public, keys.client_secret)


def test_the_workers_config_carries_only_the_client_keys():
    keras = pytest.importorskip("keras")
    from zdk.driver.engine import worker_config
    from zdk.driver.planning import plan_training

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plan = plan_training(model, algorithm="downpour", owner="Test", loss="mse")
    keys = CurveKeys.generate()
    config = worker_config(plan, shuffle=False, endpoints=("tcp://127.0.0.1:1",), curve=keys).to_json()
    assert keys.server_secret not in config and keys.client_secret in config


def test_key_files_are_created_private_once_and_never_through_a_symlink(tmp_path):
    keys = CurveKeys.generate()
    path = tmp_path / "keys.json"
    keys.save(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600 and CurveKeys.load(str(path)) == keys
    with pytest.raises(ConfigError, match="cannot be created") as info:
        keys.save(str(path))  # never overwritten
    assert info.value.field == "curve_keys"
    target = tmp_path / "elsewhere.json"
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(ConfigError, match="cannot be created"):
        keys.save(str(tmp_path / "link.json"))
    assert not target.exists()


def test_loading_refuses_a_key_file_others_can_read_or_a_symlink(tmp_path):
    keys = CurveKeys.generate()
    path = tmp_path / "keys.json"
    keys.save(str(path))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"must be readable by its owner only \(mode 0600\). Received: mode 0644"):
        CurveKeys.load(str(path))
    os.chmod(path, 0o600)
    (tmp_path / "link.json").symlink_to(path)
    with pytest.raises(ConfigError, match="a symlink is not followed"):
        CurveKeys.load(str(tmp_path / "link.json"))
