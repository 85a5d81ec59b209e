"""The oldest Keras and aiohttp ``zdk serve`` runs with: older ones have known holes that an
upload or a request reaches.

- keras < 3.14: ``config.json`` could import any module (< 3.9, CVE-2025-1550), ``get_file``
  bypassed ``safe_mode`` (< 3.11, CVE-2025-8747/9906), ``StringLookup`` read server files
  (< 3.12, CVE-2025-12058), ``TFSMLayer`` bypassed ``safe_mode`` and HDF5 weights allocated
  without bound (3.13.0–3.13.1, CVE-2026-1462/0897), archive extraction escaped its folder
  (< 3.14, GHSA-hqp4-2352-xf5r).
- aiohttp < 3.14.3: a multipart denial of service (< 3.9.4, CVE-2024-30251), request smuggling
  and parser bugs (< 3.13.4), pipelined requests queued without limit (< 3.14.1), request
  smuggling through a WebSocket upgrade (< 3.14.2), an out-of-bounds read in the C parser
  (< 3.14.3).

``setup.cfg`` asks for the same floors; this check catches an environment that was installed
some other way.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import metadata
from typing import Callable

from zdk.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Floor:
    """The oldest safe version of a package.

    Args:
        package: its distribution name.
        version: the floor (``"3.14.0"``).
    """

    package: str
    version: str


#: The floors ``zdk serve`` checks at start.
FLOORS = (Floor(package="keras", version="3.14.0"), Floor(package="aiohttp", version="3.14.3"))


def release(version: str) -> tuple[tuple[int, ...], bool]:
    """The numeric release of ``version`` and whether it is a pre-release (``3.14.0rc1`` comes
    before ``3.14.0``; ``.post1``, ``-1`` and a ``+local`` suffix do not change the release)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)(.*)", version)
    if not match:
        return (), True
    numbers = tuple(int(n) for n in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers = numbers[:-1]
    rest = match.group(2).split("+")[0].lower().lstrip(".-_")
    post = rest[:1].isdigit() or rest.startswith(("post", "rev", "r")) and not rest.startswith("rc")
    return numbers, bool(rest) and not post  # an unknown suffix counts as a pre-release: the safe side


def below(found: str, floor: str) -> bool:
    """Whether the version ``found`` comes before ``floor`` (a pre-release of the floor does)."""
    have, pre = release(found)
    want, _ = release(floor)
    return have < want or (have == want and pre)


def installed(package: str) -> str | None:
    """The installed version of ``package``, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def require_safe(floors: tuple[Floor, ...] | None = None, *,
                 version_of: Callable[[str], str | None] = installed) -> None:
    """Refuses to go on when a package is missing or older than its floor.

    Args:
        floors: what to check (default: :data:`FLOORS`).
        version_of: a package's installed version (None: not installed).

    Raises:
        ConfigError: naming the package, the version found and the floor.
    """
    for floor in FLOORS if floors is None else floors:
        found = version_of(floor.package)
        if found is None:
            raise ConfigError(f"`{floor.package}` is not installed; zdk serve needs {floor.package}>={floor.version}: "
                              f"pip install '{floor.package}>={floor.version}'", field=floor.package)
        if below(found, floor.version):
            raise ConfigError(f"`{floor.package}` {found} is older than {floor.version}, the oldest zdk serve runs "
                              f"with (older versions have known holes an upload or a request reaches; see "
                              f"zdk/service/versions.py): pip install '{floor.package}>={floor.version}'. "
                              f"Received: {floor.package}=={found}", field=floor.package)
