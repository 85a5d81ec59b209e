"""The ``.keras`` archive of a submission, checked before Keras opens it.

A ``.keras`` file is a zip holding ``config.json``, ``metadata.json``, ``model.weights.h5`` and,
for some layers, ``assets/``. Keras unpacks it with :mod:`zipfile`, whose bomb guard is per
member; these checks bound the whole archive: how many members, what they are called, and
their total size once unpacked. :mod:`zipfile` stops a member at the size its header declares
(a member that unpacks to more fails its CRC), so the declared sizes bound what unpacking writes.

Run in the loader's box (:mod:`zdk.service.model_sandbox`): parsing the central directory of a
hostile archive costs memory too.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from typing import Any

from zdk.errors import ConfigError, TooLarge

#: The most members a ``.keras`` archive may hold.
MAX_MEMBERS = 1000
#: The largest ``config.json``: a configuration, not data (a ResNet-152's is about 0.5 MB).
MAX_CONFIG_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """Bounds of an archive.

    Args:
        max_unpacked_bytes: the members' total declared size.
        max_members: how many members.
        max_config_bytes: the size of ``config.json``.
    """

    max_unpacked_bytes: int
    max_members: int = MAX_MEMBERS
    max_config_bytes: int = MAX_CONFIG_BYTES


def read_config(path: str, limits: ArchiveLimits) -> dict[str, Any]:
    """Checks the archive at ``path`` and returns its parsed ``config.json``.

    Raises:
        TooLarge: naming ``model`` when it has too many members or unpacks to too much.
        ConfigError: naming ``model`` when it is not a zip, a member's name is absolute or
            climbs out with ``..``, a name repeats, or ``config.json`` is missing or not JSON.
    """
    if not zipfile.is_zipfile(path):
        raise ConfigError("`model` must be a .keras file (a zip archive from model.save('m.keras')). Received: "
                          "bytes that are not a zip archive", field="model")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise TooLarge(f"`model` must hold at most {limits.max_members} archive members. Received: "
                           f"{len(members)} members", field="model")
        names: set[str] = set()
        for info in members:
            _check_name(info.filename)
            if info.filename in names:
                raise ConfigError(f"`model` holds the member {info.filename[:100]!r} twice; a .keras archive "
                                  f"names each file once", field="model")
            names.add(info.filename)
        unpacked = sum(info.file_size for info in members)
        if unpacked > limits.max_unpacked_bytes:
            raise TooLarge(f"`model` must unpack to at most {limits.max_unpacked_bytes} bytes. Received: an "
                           f"archive of {len(members)} members declaring {unpacked} bytes", field="model")
        if "config.json" not in names:
            raise ConfigError(f"`model` must be a .keras file holding config.json. Received: a zip with "
                              f"{sorted(names)[:5]}", field="model")
        config = archive.getinfo("config.json")
        if config.file_size > limits.max_config_bytes:
            raise TooLarge(f"`model`'s config.json must be at most {limits.max_config_bytes} bytes. Received: "
                           f"{config.file_size} bytes", field="model")
        text = archive.read("config.json")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"`model`'s config.json must be JSON. Received: {type(exc).__name__}", field="model") from None
    if not isinstance(value, dict):
        raise ConfigError("`model`'s config.json must be a JSON object (a Keras model's config)", field="model")
    return value


def _check_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\0" in name:
        raise ConfigError(f"`model` holds a member whose name leaves the archive (absolute, a drive or `..`). "
                          f"Received: {name[:100]!r}", field="model")
