"""The driver's progress bar: live on a terminal, silent otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from zdk.driver.progress import ShardProgress

SCRIPT = textwrap.dedent("""
    import time, numpy as np
    from zdk.ps.launcher import start_shards
    from zdk.ps.client import PSClient
    from zdk.driver.progress import ShardProgress
    with start_shards(num_shards=2, total_size=100) as group:
        with ShardProgress(group.endpoints, num_workers=1, epochs=4, enabled=True, interval=0.05) as bar:
            assert bar.enabled
            with PSClient(group.endpoints, worker_id=0) as client:
                client.hello()
                client.pull()
                for step in range(1, 41):
                    # Steps per epoch are known after the first epoch (10 steps): then 40 in all.
                    report = {"step": step, "samples": 32 * step, "loss": 1.0 / step, "epoch": (step - 1) // 10}
                    if step > 10:
                        report["epoch_steps"] = 10
                    client.commit(np.ones(100, np.float32), report=report)
                    client.pull()
                    time.sleep(0.02)
                time.sleep(0.3)
        print("LAST", bar.last["steps"])
""")


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_bar_shows_steps_rate_and_loss_on_a_terminal():
    result = subprocess.run(["script", "-qec", f"{sys.executable} -c '{SCRIPT}'", "/dev/null"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    screen = result.stdout
    assert "zdk" in screen and "/40 steps" in screen and "samples/s" in screen and "ETA" in screen
    assert "loss 0.0250" in screen  # the last report: 1/40
    assert "LAST 40" in screen


def test_bar_is_silent_without_a_terminal_or_when_disabled(capsys):
    assert not ShardProgress(["tcp://127.0.0.1:9"], num_workers=1, epochs=1, enabled=True).enabled  # stderr captured
    assert not ShardProgress(["tcp://127.0.0.1:9"], num_workers=1, epochs=1, enabled=False).enabled
    with ShardProgress(["tcp://127.0.0.1:9"], num_workers=1, epochs=1, enabled=True):
        pass
    assert capsys.readouterr().err == ""


def test_the_total_is_known_once_every_worker_reported_its_steps_per_epoch():
    bar = ShardProgress(["tcp://127.0.0.1:9"], num_workers=2, epochs=3, enabled=False)
    assert bar.total([{"epoch_steps": 10.0}, {"step": 4.0}]) is None
    assert bar.total([{"epoch_steps": 10.0}, {"epoch_steps": 12.0}]) == 66
