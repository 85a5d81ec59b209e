"""The job service end to end: submit-to-first-step latency against calling ``train()`` directly,
and the 401 answer times of wrong tokens of every kind.

One process: a ``zdk serve`` (JobServer) on loopback over the same local[2] Spark session that the
direct ``train()`` calls use; digits, ADAG, 2 workers, 5 epochs. Both sides run warm (Keras
already imported in the Python workers) after a first untimed job.

Run: .venv/bin/python benchmarks/job_service.py [--jobs 5] [--auth-requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def model():
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="timed jobs per side (default: 5)")
    parser.add_argument("--auth-requests", type=int, default=300, help="requests per token kind (default: 300)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import requests
    from sklearn.datasets import load_digits

    from zdk.jobs import JobClient
    from zdk.driver.session import get_session
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.build import Policy
    from zdk.trainers import ADAG

    spark = get_session("local[2]")
    x, y = load_digits(return_X_y=True)
    frame = pd.DataFrame({"features": list((x / 16.0).astype(np.float32)), "label": y.astype(np.int64)})
    with tempfile.TemporaryDirectory(prefix="zdk-bench-") as tmp:
        spark.createDataFrame(frame).coalesce(2).write.parquet(os.path.join(tmp, "digits.parquet"))
        df = spark.read.parquet(os.path.join(tmp, "digits.parquet"))
        path = os.path.join(tmp, "m.keras")
        model().save(path)
        with open(path, "rb") as fh:
            model_bytes = fh.read()
        spec = {"name": "bench", "trainer": {"class": "ADAG", "arguments": {
                    "worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
                    "num_epoch": 5, "batch_size": 32}},
                "data": {"format": "parquet", "path": "digits.parquet"},
                "resources": {"num_executors": 1, "num_processes": 2}}
        config = ServeConfig(state_dir=os.path.join(tmp, "state"), port=0, policy=Policy(data_roots=(tmp,)))
        with JobServer(config, spark=lambda: spark) as server:
            token = server.store.create_token("bench")
            client = JobClient(server.url, token)
            client.wait(client.submit(spec, model_bytes)["id"], progress=False)  # warm-up, untimed
            ADAG(model(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=1,
                 progress=False).train(df)
            rows = []
            for _ in range(args.jobs):
                direct = ADAG(model(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=5,
                              batch_size=32, progress=False)
                started = time.perf_counter()
                direct.train(df)
                direct_total = time.perf_counter() - started
                posted = time.perf_counter()
                job = client.submit(spec, model_bytes)
                admitted = time.perf_counter() - posted
                final = client.wait(job["id"], progress=False, interval=0.2)
                timings = final["progress"]["timings"]
                queue = final["started"] - final["created"]
                rows.append({"admit": admitted, "queue": queue, "job_first": timings["time_to_first_step"],
                             "service_first": admitted + queue + timings["time_to_first_step"],
                             "direct_first": direct.timings["time_to_first_step"],
                             "service_total": admitted + final["finished"] - final["created"],
                             "direct_total": direct_total})
            kinds = {"valid": token, "unknown": "zdk_" + "x" * 43, "revoked": server.store.create_token("gone"),
                     "malformed": "not-a-token", "missing": None}
            server.store.revoke(user="gone")
            session = requests.Session()
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.auth_requests):
                for kind, value in kinds.items():
                    headers = {"Authorization": f"Bearer {value}"} if value else {}
                    t0 = time.perf_counter()
                    status = session.get(f"{server.url}/api/whoami", headers=headers, timeout=10).status_code
                    times[kind].append(time.perf_counter() - t0)
                    assert status == (200 if kind == "valid" else 401), (kind, status)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\nSubmit to first step, median of {args.jobs} jobs (warm; digits, ADAG, 2 workers, 5 epochs)\n")
    print("| phase | job service (s) | direct train() (s) |\n|---|---|---|")
    print(f"| POST /api/jobs answered (validation: model load, trainer, schema, one-row pre-flight) | "
          f"{med['admit']:.2f} | - |")
    print(f"| queued → started | {med['queue']:.2f} | - |")
    print(f"| started → first step (trainer.timings) | {med['job_first']:.2f} | {med['direct_first']:.2f} |")
    print(f"| **submit → first step** | **{med['service_first']:.2f}** | {med['direct_first']:.2f} |")
    print(f"| submit → finished | {med['service_total']:.2f} | {med['direct_total']:.2f} |")
    print(f"| ratio service / direct, to first step | {med['service_first'] / med['direct_first']:.2f}× | 1.00× |")
    print(f"| ratio service / direct, whole job | {med['service_total'] / med['direct_total']:.2f}× | 1.00× |")
    print(f"\n401 answer times over {args.auth_requests} requests per kind (GET /api/whoami, loopback)\n")
    print("| token | median (ms) | p90 (ms) | median / unknown token |\n|---|---|---|---|")
    base = statistics.median(times["unknown"])
    for kind, values in times.items():
        values = sorted(values)
        print(f"| {kind} | {statistics.median(values) * 1e3:.3f} | {values[int(0.9 * len(values))] * 1e3:.3f} | "
              f"{statistics.median(values) / base:.3f} |")
    print(json.dumps({"rows": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
