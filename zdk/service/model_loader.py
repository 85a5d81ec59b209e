"""A model loader: the child process of :mod:`zdk.service.model_sandbox` that checks an upload
under limits, so that what a hostile ``.keras`` file costs is this process, never the server.

For each request (one JSON line on standard input: a path and the limits) it lowers its own
``RLIMIT_AS`` (its address space now plus the allowed growth) and ``RLIMIT_CPU``, then checks
the archive (:mod:`zdk.service.model_archive`), estimates the parameters from ``config.json``
(:mod:`zdk.service.model_params`) and refuses the model before loading it when the estimate is
over the cap; otherwise it loads it with Keras's ``safe_mode`` and answers (one JSON line) with
the parameter count and the weights' shapes. It exits when its standard input closes, and after
running out of memory.

    python -m zdk.service.model_loader [CUSTOM_MODULE …]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
from typing import IO, Any, Iterator, Sequence

from zdk.errors import ConfigError, TooLarge
from zdk.service import model_archive, model_params

#: The most weight shapes an answer lists.
MAX_SHAPES = 1000


def _vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _limited(memory_bytes: int, seconds: float) -> Iterator[None]:
    """Lowers this process's address-space and CPU-time soft limits to what it uses now plus
    the allowance, and raises them back after (the hard limits stay: nothing the upload holds
    runs as code, which is what safe_mode and the Keras floor are for)."""
    old_as = resource.getrlimit(resource.RLIMIT_AS)
    old_cpu = resource.getrlimit(resource.RLIMIT_CPU)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cap_as = _vm_size() + memory_bytes
    cap_cpu = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    resource.setrlimit(resource.RLIMIT_AS, (_lower(cap_as, old_as[1]), old_as[1]))
    resource.setrlimit(resource.RLIMIT_CPU, (_lower(cap_cpu, old_cpu[1]), old_cpu[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old_as)
        resource.setrlimit(resource.RLIMIT_CPU, old_cpu)


def _lower(value: int, hard: int) -> int:
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def check(request: dict[str, Any]) -> dict[str, Any]:
    """One check in the loader: archive, estimate, then the load under limits."""
    import keras

    try:
        with _limited(int(request["memory_bytes"]), float(request["seconds"])):
            config = model_archive.read_config(request["path"], model_archive.ArchiveLimits(
                max_unpacked_bytes=int(request["max_unpacked_bytes"])))
            estimated = model_params.estimate(config)
            if estimated > int(request["max_params"]):
                return {"ok": False, "status": 400,
                        "error": f"`model` would have about {estimated:,} parameters (estimated from its config.json, "
                                 f"before loading); the server allows {int(request['max_params']):,} "
                                 f"(--max-model-params)"}
            model = keras.saving.load_model(request["path"], compile=False, safe_mode=True)
            weights = [[int(d) for d in w.shape] for w in model.weights]
            return {"ok": True, "params": int(model.count_params()), "estimate": estimated,
                    "weights": weights[:MAX_SHAPES]}
    except TooLarge as exc:
        return {"ok": False, "status": 413, "error": str(exc)}
    except ConfigError as exc:
        return {"ok": False, "status": 400, "error": str(exc)}
    except MemoryError:
        return _out_of_memory(request)
    except Exception as exc:
        if type(exc).__name__ == "ResourceExhaustedError":  # TensorFlow's out-of-memory
            return _out_of_memory(request)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return {"ok": False, "status": 400,
                "error": f"`model` could not be loaded as a Keras model: {type(exc).__name__}: {first[:500]}"}


def _out_of_memory(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": False, "status": 400, "restart": True,
            "error": f"`model` needs more memory to load than the server allows "
                     f"({int(request['memory_bytes']) // 2**20} MB, --model-memory-mb)"}


def _warm_up() -> None:
    """Loads a tiny model once, so imports, thread pools and allocator arenas exist before the
    first check's limits are set."""
    import tempfile

    import keras

    with tempfile.TemporaryDirectory(prefix="zdk-loader-") as tmp:
        path = os.path.join(tmp, "warm.keras")
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
        keras.saving.load_model(path, compile=False, safe_mode=True)


def main(argv: Sequence[str]) -> int:
    """The loader's loop: the custom modules, a warm-up load, then one answer per request."""
    import importlib
    import warnings

    protocol: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes where stderr goes, never into the protocol
    warnings.simplefilter("ignore")

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        for name in argv:
            importlib.import_module(name)
        _warm_up()
    except Exception as exc:
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("ping"):
            send({"pong": True})
            continue
        answer = check(request)
        send(answer)
        if answer.get("restart"):
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
