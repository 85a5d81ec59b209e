"""The job server's dashboard in a real headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import requests

from conftest import digits_mlp, poll_until

pytestmark = pytest.mark.spark

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "docs", "images", "dashboard.png")


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail("the dashboard test needs Debian's chromium and chromium-driver: apt-get install chromium "
                    "chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _submit(server, token: str, model: bytes, validation: float | None = None, **arguments) -> str:
    spec = {"name": arguments.pop("name"), "trainer": {"class": "ADAG", "arguments": {
                "worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
                "batch_size": 32, **arguments}},
            "data": {"format": "parquet", "path": "digits.parquet"},
            "resources": {"num_executors": 1, "num_processes": 2}, "validation": validation}
    response = requests.post(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                             files={"spec": ("spec.json", json.dumps(spec)), "model": ("m.keras", model)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _legend(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    text = browser.find_element(By.ID, "loss-plot").text
    return [f"worker {w}" for w in range(4) if f"worker {w}" in text]


def _epoch_plot(browser) -> bool:
    """Whether the per-epoch plot is drawn with its training and validation loss."""
    from selenium.webdriver.common.by import By

    plot = browser.find_element(By.ID, "epoch-plot")
    return (browser.find_element(By.ID, "epochs").is_displayed() and bool(plot.find_elements(By.TAG_NAME, "canvas"))
            and "training loss" in plot.text and "validation loss" in plot.text)


def test_the_dashboard_shows_a_job_running_then_finished_with_its_loss_plot(job_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "m.keras"
    digits_mlp().save(path)
    token = job_server.tokens["alice"]
    browser.get(job_server.url + "/")
    browser.find_element(By.ID, "token").send_keys("zdk_not_a_token")
    browser.find_element(By.ID, "signin").click()
    poll_until(lambda: "refused" in browser.find_element(By.ID, "message").text, what="a refused sign-in")
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin").click()
    poll_until(lambda: browser.find_element(By.ID, "whoami").text == "signed in as alice", what="sign-in")

    # 8-row steps: the run lasts several seconds, so the live view below is seen while it runs.
    job_id = _submit(job_server, token, path.read_bytes(), name="digits-adag", num_epoch=25, batch_size=8,
                     validation=0.2)
    row = f"#jobs tr[data-id='{job_id}']"
    poll_until(lambda: browser.find_elements(By.CSS_SELECTOR, row), timeout=30, what="the job in the list")
    browser.find_element(By.CSS_SELECTOR, row).click()
    poll_until(lambda: browser.find_element(By.ID, "state").text == "running", timeout=60, what="running")
    # While it runs: live steps, a loss curve per worker and the shards' stats.
    poll_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#loss-plot canvas"), timeout=60,
               what="the loss plot")
    poll_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#shards tbody tr"), timeout=30, what="shard stats")
    # A worker's curve starts at its first commit; the second worker's Python process may start later.
    poll_until(lambda: {"worker 0", "worker 1"} <= set(_legend(browser)), timeout=60, what="a loss curve per worker")
    assert int(browser.find_element(By.ID, "steps").text.split()[0]) > 0
    # Beside it, the training and validation loss per epoch, from the progress snapshots' epoch_logs.
    poll_until(lambda: _epoch_plot(browser), timeout=60, what="the per-epoch loss plot")
    poll_until(lambda: browser.find_element(By.ID, "state").text == "finished", timeout=120, what="finished")
    steps = poll_until(lambda: browser.find_element(By.ID, "steps").text.split(" / "), what="the final steps")
    assert len(steps) == 2 and steps[0] == steps[1], steps  # every step of the history, not the last poll
    assert float(browser.find_element(By.ID, "loss").text) > 0
    assert browser.find_elements(By.CSS_SELECTOR, "#loss-plot canvas")
    # Finished, the plot shows the job's final epoch history: every epoch, both series.
    assert _epoch_plot(browser) and float(browser.find_element(By.ID, "val-loss").text) > 0
    epochs = requests.get(f"{job_server.url}/api/jobs/{job_id}/epochs", headers={"Authorization": f"Bearer {token}"},
                          timeout=10).json()
    assert [e["epoch"] for e in epochs] == list(range(25)) and all(e["val_loss"] is not None for e in epochs)
    assert browser.execute_script("return state.epochPlot.data[0].length") == 25
    assert "zdk job fetch " + job_id in browser.find_element(By.ID, "downloads").text
    assert browser.find_element(By.ID, "error").is_displayed() is False
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("ZDK_UPDATE_SCREENSHOT") == "1":
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)


def test_the_dashboard_shows_why_a_job_failed(job_server, browser, tmp_path):
    import keras
    from selenium.webdriver.common.by import By

    # Five classes for ten digits: the pre-flight row may pass, the labels beyond 4 fail in training.
    path = tmp_path / "five.keras"
    keras.Sequential([keras.Input((64,)), keras.layers.Dense(5, activation="softmax")]).save(path)
    token = job_server.tokens["bob"]
    job_id = _submit(job_server, token, path.read_bytes(), name="five <b>classes</b>", num_epoch=2)
    browser.get(job_server.url + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin").click()
    row = f"#jobs tr[data-id='{job_id}']"
    poll_until(lambda: browser.find_elements(By.CSS_SELECTOR, row), timeout=30, what="the job in the list")
    browser.find_element(By.CSS_SELECTOR, row).click()
    poll_until(lambda: browser.find_element(By.ID, "state").text == "failed", timeout=120, what="failed")
    assert not browser.find_element(By.ID, "epochs").is_displayed()  # no validation, no callbacks: no epoch plot
    assert browser.find_element(By.ID, "detail-name").text == "five <b>classes</b>"  # text, never markup
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "label value of" in error.text, error.text
    log = requests.get(f"{job_server.url}/api/jobs/{job_id}/logs", headers={"Authorization": f"Bearer {token}"},
                       timeout=10).text
    assert "Spark's full report" in log and "Traceback" in log  # the owner reads it without server access
