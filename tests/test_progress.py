"""The driver's progress bar: live on a terminal, silent otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from zdk.runtime.progress import ShardProgress

SCRIPT = textwrap.dedent("""
    import time, numpy as np
    from zdk.ps.launcher import start_shards
    from zdk.ps.client import PSClient
    from zdk.runtime.progress import ShardProgress
    with start_shards(num_shards=2, total_size=100) as group:
        with ShardProgress(group.endpoints, total_steps=40, enabled=True, interval=0.05) as bar:
            assert bar.enabled
            with PSClient(group.endpoints, worker_id=0) as client:
                client.hello()
                client.pull()
                for step in range(1, 41):
                    client.commit(np.ones(100, np.float32), report={"step": step, "samples": 32 * step,
                                                                    "loss": 1.0 / step, "epoch": 0})
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
    assert "zdk" in screen and "/40 steps" in screen and "samples/s" in screen
    assert "loss 0.0250" in screen  # the last report: 1/40
    assert "LAST 40" in screen


def test_bar_is_silent_without_a_terminal_or_when_disabled(capsys):
    assert not ShardProgress(["tcp://127.0.0.1:9"], total_steps=1, enabled=True).enabled  # pytest captures stderr
    assert not ShardProgress(["tcp://127.0.0.1:9"], total_steps=1, enabled=False).enabled
    with ShardProgress(["tcp://127.0.0.1:9"], total_steps=1, enabled=True):
        pass
    assert capsys.readouterr().err == ""
