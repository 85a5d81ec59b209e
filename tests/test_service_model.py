"""What an uploaded model is checked against before the server loads it: the archive's bounds,
the parameter estimate from its config, the safe versions of Keras and aiohttp. No Spark."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import zipfile

import pytest

from conftest import digits_mlp
from zdk.errors import ConfigError, TooLarge
from zdk.service import model_archive, model_params, versions


def keras_file(tmp_path, model) -> bytes:
    path = tmp_path / "m.keras"
    model.save(path)
    return path.read_bytes()


def config_of(data: bytes) -> dict:
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))


def test_the_estimate_bounds_the_parameters_of_real_models(tmp_path):
    import keras

    layers = keras.layers
    inputs = keras.Input((10, 16))
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=8)(inputs, inputs)
    models = [
        digits_mlp(),
        keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3), layers.BatchNormalization(),
                          layers.MaxPooling2D(), layers.SeparableConv2D(16, 3), layers.DepthwiseConv2D(3),
                          layers.Flatten(), layers.Dense(10)]),
        keras.Sequential([keras.Input((None,)), layers.Embedding(1000, 16),
                          layers.Bidirectional(layers.LSTM(8, return_sequences=True)), layers.GRU(4), layers.Dense(2)]),
        keras.Sequential([keras.Input((5, 7)), layers.TimeDistributed(layers.Dense(3)), layers.SimpleRNN(4),
                          layers.LayerNormalization(), layers.PReLU()]),
        keras.Model(inputs, keras.Sequential([keras.Input((10, 32)), layers.Dense(5)])(
            layers.Concatenate()([attended, inputs]))),
    ]
    for model in models:
        estimate = model_params.estimate(config_of(keras_file(tmp_path, model)))
        assert model.count_params() <= estimate <= 1.2 * model.count_params(), (model.name, estimate)


def _dense_config(tmp_path, width: int, units: int, *, build_config: bool = True) -> dict:
    import keras

    config = config_of(keras_file(tmp_path, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])))
    config["config"]["layers"][0]["config"]["batch_shape"] = [None, width]
    dense = config["config"]["layers"][1]
    dense["config"]["units"] = units
    if build_config:
        dense["build_config"] = {"input_shape": [None, width]}
    else:
        del dense["build_config"]
    return config


def test_the_estimate_is_conservative_where_the_config_does_not_say(tmp_path):
    huge = 100_000 * 100_000 + 100_000  # a 40 GB Dense layer, in 1 KB of JSON
    assert model_params.estimate(_dense_config(tmp_path, 100_000, 100_000)) == huge
    # Without its build_config a layer is built on what reaches it: as wide as the widest size declared.
    assert model_params.estimate(_dense_config(tmp_path, 100_000, 100_000, build_config=False)) >= huge
    unknown = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "MyHugeLayer", "config": {"size": 200_000, "seed": 10**12,
                                                 "dtype": {"config": {"shared_object_id": 10**15}}},
         "build_config": {"input_shape": [None, 300_000]}}]}}
    assert model_params.estimate(unknown) == 200_000 * 300_000  # seeds and nested ids are not sizes
    assert model_params.estimate({"class_name": "Dense", "config": {"units": float("inf")}}) >= model_params.INFINITE
    nested: dict = {"class_name": "Sequential", "config": {}}
    for _ in range(5000):
        nested = {"class_name": "Bidirectional", "config": {"layer": nested}}
    with pytest.raises(ConfigError, match="nests too deeply") as caught:
        model_params.estimate(nested)
    assert caught.value.field == "model"


def _archive(tmp_path, members: dict[str, bytes], name: str = "a.keras") -> str:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return str(path)


def test_the_archive_is_bounded_in_members_names_and_unpacked_size(tmp_path):
    limits = model_archive.ArchiveLimits(max_unpacked_bytes=8 * 2**20, max_members=50)
    config = json.dumps({"class_name": "Sequential", "config": {"layers": []}}).encode()
    assert model_archive.read_config(_archive(tmp_path, {"config.json": config}), limits)["class_name"] == "Sequential"
    bomb = {"config.json": config, **{f"assets/zeros-{k}": bytes(2**20) for k in range(40)}}
    cases = [
        (bomb, TooLarge, "unpack to at most 8388608 bytes"),
        ({"config.json": config, **{f"m{k}": b"" for k in range(51)}}, TooLarge, "at most 50 archive members"),
        ({"config.json": config, "../escape": b"x"}, ConfigError, "leaves the archive"),
        ({"config.json": config, "/etc/cron.d/x": b"x"}, ConfigError, "leaves the archive"),
        ({"config.json": config, "assets\\..\\..\\x": b"x"}, ConfigError, "leaves the archive"),
        ({"weights.h5": b"x"}, ConfigError, "holding config.json"),
        ({"config.json": b"[1, 2]"}, ConfigError, "JSON object"),
        ({"config.json": b"{nope"}, ConfigError, "must be JSON"),
    ]
    for k, (members, error, message) in enumerate(cases):
        with pytest.raises(error, match=message.replace("\\", "\\\\")) as caught:
            model_archive.read_config(_archive(tmp_path, members, f"case-{k}.keras"), limits)
        assert caught.value.field == "model"
    (tmp_path / "text.keras").write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match="not a zip archive"):
        model_archive.read_config(str(tmp_path / "text.keras"), limits)


def test_versions_below_their_safe_floor_are_refused_naming_package_version_and_floor():
    assert versions.below("3.13.1", "3.14.0") and versions.below("3.14.0rc1", "3.14.0")
    assert not versions.below("3.14.0", "3.14.0") and not versions.below("3.15.1", "3.14.0")
    assert not versions.below("3.14", "3.14.0") and not versions.below("3.14.3.post1", "3.14.3")
    assert versions.below("3.9.10", "3.14.3") and not versions.below("10.0", "3.14.3")
    fake = {"keras": "3.11.3", "aiohttp": "3.14.5"}
    with pytest.raises(ConfigError, match=r"`keras` 3\.11\.3 is older than 3\.14\.0.*pip install 'keras>=3\.14\.0'") as caught:
        versions.require_safe(version_of=fake.get)
    assert caught.value.field == "keras"
    with pytest.raises(ConfigError, match=r"`aiohttp` 3\.9\.3 is older than 3\.14\.3") as caught:
        versions.require_safe(version_of={"keras": "3.15.0", "aiohttp": "3.9.3"}.get)
    assert caught.value.field == "aiohttp"
    with pytest.raises(ConfigError, match="`keras` is not installed"):
        versions.require_safe(version_of={"aiohttp": "3.14.5"}.get)
    versions.require_safe()  # what this environment has passes


def test_zdk_serve_refuses_to_start_below_a_floor_naming_it(tmp_path):
    import subprocess
    import sys

    # The real command, with the floor raised above what is installed (not a downgrade).
    code = ("import sys; from zdk.service import versions; "
            "versions.FLOORS = (versions.Floor(package='keras', version='99.0'),); "
            "from zdk.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "serve", "--state-dir", str(tmp_path / "s"), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    installed = versions.installed("keras")
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"`keras` {installed} is older than 99.0" in result.stderr


def loaders() -> list[int]:
    """The model loader processes this test process started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"zdk.service.model_loader" in command and parent == os.getpid():
            found.append(int(pid))
    return found


def test_a_load_over_its_deadline_is_killed_and_a_loader_killed_from_outside_is_replaced(tmp_path):
    from conftest import pid_alive, poll_until
    from zdk.service.model_sandbox import LoadLimits, ModelSandbox

    path = tmp_path / "m.keras"
    path.write_bytes(keras_file(tmp_path, digits_mlp()))
    limits = LoadLimits(max_params=10**6, max_unpacked_bytes=2**24, memory_bytes=2**30, seconds=60)
    sandbox = ModelSandbox()
    try:
        assert sandbox.inspect(str(path), limits).params == digits_mlp().count_params()
        [first] = loaders()
        os.kill(first, signal.SIGKILL)  # an operator's kill, or the OOM killer, while it waits
        poll_until(lambda: not pid_alive(first), what="the loader to die")
        assert sandbox.inspect(str(path), limits).estimate == 2410  # a new loader, not a refusal
        [second] = loaders()
        with pytest.raises(ConfigError, match=r"`model` took more than 0.001 s to load.*--model-load-seconds"):
            sandbox.inspect(str(path), dataclasses.replace(limits, seconds=0.001))
        assert not pid_alive(second)
    finally:
        sandbox.close()
    assert loaders() == []
