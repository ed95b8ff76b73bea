"""The web playground at /, driven in a real headless Chromium (Debian's chromium + chromedriver, through Selenium).

From filling the form to the output image shown on the page, with the progress it streamed on the way, and a batch
job of two pasted prompts followed to its two results; one Run button, a download link on each output, and the
seed's maximum (2^64-1) shown, sent and reported exactly. The page's last state is kept as artifacts/playground.png
(CI keeps artifacts/), whether the test passed or not; the finished run as artifacts/playground-run.png.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import ROOT, sample_image

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = ROOT / "artifacts" / "playground.png"
SIZE = 64
STEPS = 3
WAIT_S = 180


def test_root_serves_the_playground_and_docs_move_to_docs(server: str) -> None:
    page = httpx.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "comfybento playground" in page.text and "./playground/app.js" in page.text
    script = httpx.get(f"{server}/playground/app.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"] and "/stream" in script.text
    assert httpx.get(f"{server}/playground/style.css", timeout=30).headers["content-type"].startswith("text/css")
    docs = httpx.get(f"{server}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/docs.json" in docs.text


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium; it and every process it started are gone afterwards."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("the playground test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100",
                f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    started = psutil.Process(service.process.pid)
    family = [started, *started.children(recursive=True)]
    try:
        yield driver
    finally:
        driver.quit()
        _, alive = psutil.wait_procs(family, timeout=15)
        for proc in alive:
            proc.kill()


def wait_for(driver: Any, script: str, what: str) -> Any:
    """Wait until the page's `script` (a JS expression) is truthy; on timeout, say what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(lambda d: d.execute_script(f"return {script};"))
    except TimeoutException:
        status = driver.execute_script(
            "return [document.getElementById('run-status')?.textContent, document.getElementById('job-status')?.textContent];")
        raise AssertionError(f"timed out waiting for {what}; the page's status lines: {status}") from None


def fill(driver: Any, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, f"field-{field}")
    element.clear()
    element.send_keys(value)


def assert_each_output_has_a_download_link(driver: Any, container: str) -> None:
    """Every output shown under `container` has one <a download> with a file name and the output's own bytes as href."""
    links = driver.execute_script(
        f"return [...document.querySelectorAll('{container} figure.output')].map(f => [...f.querySelectorAll('a[download]')]"
        ".map(a => [a.getAttribute('download'), a.href.slice(0, 11)]));")
    assert links and all(len(per) == 1 for per in links), links
    for name, href in (per[0] for per in links):
        assert re.fullmatch(r"[A-Za-z0-9._-]+-\d+\.(png|webp|jpg)", name), name
        assert href.startswith(("data:image/", "blob:")), href


def run_and_wait(driver: Any) -> list[int]:
    """Click Run; once the stream says done, the first output image's decoded [width, height]."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "run").click()
    wait_for(driver, "document.getElementById('run-status').dataset.outcome", "the run to finish")
    status = driver.find_element(By.ID, "run-status")
    assert status.get_attribute("data-outcome") == "done", status.text
    return wait_for(  # type: ignore[no-any-return]
        driver,
        "(() => { const img = document.querySelector('#gallery figure.output-image img');"
        " return img && img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]; })()",
        "the output image to decode",
    )


def test_playground_runs_a_workflow_and_a_job_in_chromium(server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{server}/")
        wait_for(browser, "document.body.dataset.ready === '1'", "the forms built from /docs.json")
        workflow = Select(browser.find_element(By.ID, "workflow"))
        # one Run button (the tab that shows it is named apart)
        buttons = [b.text.strip() for b in browser.find_elements(By.TAG_NAME, "button")]
        assert buttons.count("Run") == 1, buttons

        # An image input by file upload (sent as a data URI): img2img's output has the input's size.
        workflow.select_by_value("img2img")
        sample_image(80, 48).save(tmp_path / "input.png")
        browser.find_element(By.ID, "field-image").send_keys(str(tmp_path / "input.png"))
        fill(browser, "steps", "2")
        assert run_and_wait(browser) == [80, 48]

        assert_each_output_has_a_download_link(browser, "#gallery")

        workflow.select_by_value("txt2img")
        # the seed's maximum exactly as the schema says (2^64-1), never rounded through a JavaScript Number
        seed = browser.find_element(By.ID, "field-seed")
        assert seed.get_attribute("max") == str(2**64 - 1)
        hint = browser.execute_script("return document.getElementById('field-seed').parentElement.querySelector('small').textContent;")
        assert f"max {2**64 - 1}" in hint and "18446744073709552000" not in hint, hint
        steps = browser.find_element(By.ID, "field-steps")
        assert (steps.get_attribute("min"), steps.get_attribute("step")) == ("1", "1")  # bounds from the schema
        assert browser.find_element(By.ID, "field-prompt").tag_name == "textarea"  # a multiline prompt
        assert "webp" in [o.text for o in Select(browser.find_element(By.ID, "field-output_format")).options]  # enums as selects
        preset = Select(browser.find_element(By.ID, "field-preset"))  # the sidecar's presets, none chosen at first
        assert preset.first_selected_option.text == "(none)" and [o.text for o in preset.options][1:] == ["fast", "balanced", "quality"]
        preset.select_by_value("fast")
        assert steps.get_attribute("value") == "8"  # a chosen preset fills the fields it sets
        fill(browser, "prompt", "a lighthouse at dusk")
        fill(browser, "width", str(SIZE))
        fill(browser, "height", str(SIZE))
        fill(browser, "steps", str(STEPS))
        # The output image is shown and decodes at the size asked for; the step progress was streamed on the way.
        assert run_and_wait(browser) == [SIZE, SIZE]
        bar = browser.find_element(By.ID, "run-progress")
        assert bar.get_attribute("data-seen") == "1" and bar.get_attribute("max") == str(STEPS)
        assert "seed" in browser.find_element(By.ID, "run-status").text
        assert_each_output_has_a_download_link(browser, "#gallery")
        # the largest seed goes out and comes back exact
        fill(browser, "seed", str(2**64 - 1))
        fill(browser, "steps", "1")
        run_and_wait(browser)
        assert f"seed {2**64 - 1}," in browser.find_element(By.ID, "run-status").text
        browser.save_screenshot(str(SCREENSHOT.with_name("playground-run.png")))

        # A batch job of two pasted prompts: both results arrive on the page, with the job's counts.
        browser.find_element(By.ID, "tab-job").click()
        browser.find_element(By.ID, "job-prompts").send_keys("a red fox\na blue bird")
        browser.find_element(By.ID, "submit-job").click()
        wait_for(browser, "document.getElementById('job-status').dataset.state === 'succeeded'", "the job to succeed")
        shown = wait_for(
            browser,
            "(() => { const imgs = [...document.querySelectorAll('#job-items .item[data-state=succeeded] img')];"
            " return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.map(i => i.naturalWidth); })()",
            "both items' images",
        )
        assert shown == [SIZE, SIZE]
        assert_each_output_has_a_download_link(browser, "#job-items")
        status = browser.find_element(By.ID, "job-status")
        assert "2 succeeded of 2" in status.text
        assert status.get_attribute("data-followed") == "events"  # followed through GET /jobs/{id}/events, not by polling
    finally:
        browser.save_screenshot(str(SCREENSHOT))
