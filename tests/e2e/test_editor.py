"""ComfyUI's own web editor at /comfy/ on one real `bentoml serve` with API keys on (alice and bob).

Over HTTP: the editor's files, the login that turns a key into a cookie, its API calls mapped onto ComfyUI's routes
under the key's limits, and each key's user data and settings kept apart. In a real headless Chromium: alice logs in
on the login page, the editor (the installed comfyui-frontend-package, unchanged) builds its node library from
/object_info, imports a custom node's frontend extension (its WEB_DIRECTORY), opens a UI-format workflow through its
own loader, and its Run button queues it; the progress comes back
over the websocket and the output image appears in the Save Image node. The page is kept as artifacts/editor.png (CI
keeps artifacts/); the page as the test left it, passed or not, as artifacts/editor-last.png. Last, a graph that matches
no served workflow gets ComfyUI's error answer, which the editor shows in its own error dialog.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from comfybento.front.keys import hash_key, new_key
from tests.e2e.conftest import serving
from tests.e2e.test_playground import browser  # noqa: F401 (the fixture: a headless Chromium, gone afterwards)
from tests.helpers import GRAPHS, ROOT, make_workflows_dir, png_array, service_env

pytestmark = pytest.mark.e2e

SCREENSHOT = ROOT / "artifacts" / "editor.png"
UI_WORKFLOW = GRAPHS / "ui_txt2img.json"  # a workflow as ComfyUI saves it: a primitive, a reroute, a bypassed and a muted node
WAIT_S = 180
MAX_FILE = 64 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("editor")
    keys = {name: new_key() for name in ("alice", "bob")}
    (root / "keys.yaml").write_text("".join(f'- name: {n}\n  sha256: "{hash_key(k)}"\n' for n, k in keys.items()))
    env = {**service_env(make_workflows_dir(root / "workflows", ()), root / "work"),
           "COMFYBENTO_API_KEYS_FILE": str(root / "keys.yaml"), "COMFYBENTO_USERDATA_MAX_BYTES": str(MAX_FILE)}
    with serving(env, root) as url:
        yield url, keys


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _cookie(url: str, key: str) -> httpx.Cookies:
    r = httpx.post(f"{url}/comfy/login", headers=_as(key), timeout=30)
    assert r.status_code == 204, r.text
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/comfy" in set_cookie, set_cookie
    return r.cookies


def test_editor_files_login_and_its_calls_onto_comfyuis_routes(site):
    url, keys = site
    assert httpx.get(f"{url}/comfy", timeout=30).headers["location"] == "/comfy/"
    to_login = httpx.get(f"{url}/comfy/", timeout=30)
    assert (to_login.status_code, to_login.headers["location"]) == (303, "/comfy/login")
    assert "API key" in httpx.get(f"{url}/comfy/login", timeout=30).text
    wrong = httpx.post(f"{url}/comfy/login", headers=_as(new_key()), timeout=30)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

    cookies = _cookie(url, keys["alice"])
    page = httpx.get(f"{url}/comfy/", cookies=cookies, timeout=30)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache" and "<title>ComfyUI</title>" in page.text
    script = page.text.split('type="module" crossorigin src="', 1)[1].split('"', 1)[0]  # ./assets/index-<hash>.js
    asset = httpx.get(f"{url}/comfy/{script.removeprefix('./')}", timeout=30)
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
    assert "immutable" in asset.headers["cache-control"]
    outside = httpx.get(f"{url}/comfy/%2e%2e/service.py", headers=_as(keys["alice"]), timeout=30)
    assert outside.status_code == 404 and "bentoml" not in outside.text  # no file outside the package's folder

    # the editor's calls reach ComfyUI's routes as the cookie's key, and nothing else of the service
    mine = httpx.get(f"{url}/comfy/api/object_info/CheckpointLoaderSimple", cookies=cookies, timeout=30)
    assert mine.json() == httpx.get(f"{url}/object_info/CheckpointLoaderSimple", headers=_as(keys["alice"]), timeout=30).json()
    assert httpx.get(f"{url}/comfy/api/object_info", timeout=30).status_code == 401
    assert httpx.get(f"{url}/comfy/api/object_info", cookies=cookies, headers={"Origin": "https://elsewhere.example"},
                     timeout=30).status_code == 401  # another site's page gets no use of the cookie
    assert httpx.get(f"{url}/comfy/api/jobs", headers=_as(keys["alice"]), timeout=30).status_code == 404
    # the custom nodes' scripts, listed as ComfyUI lists them, and served under /comfy/ (nothing outside their folder)
    listed = httpx.get(f"{url}/api/extensions", headers=_as(keys["alice"]), timeout=30).json()
    assert "/extensions/comfybento_web_test/test_extension.js" in listed and "/extensions/core/groupNode.js" in listed
    script = httpx.get(f"{url}/comfy/extensions/comfybento_web_test/test_extension.js", timeout=30)
    assert script.status_code == 200 and "registerExtension" in script.text
    assert httpx.get(f"{url}/comfy/extensions/comfybento_web_test/..%2F__init__.py", headers=_as(keys["alice"]),
                     timeout=30).status_code == 404
    # the official templates, as ComfyUI serves them to the editor's template browser
    index = httpx.get(f"{url}/comfy/templates/index.json", timeout=30)
    assert index.status_code == 200 and index.json() and all("templates" in group for group in index.json())


def test_each_keys_settings_and_files_are_its_own(site):
    url, keys = site
    alice, bob = _as(keys["alice"]), _as(keys["bob"])
    workflow = UI_WORKFLOW.read_bytes()
    assert httpx.post(f"{url}/api/settings/Comfy.ColorPalette", headers=alice, json="light", timeout=30).status_code == 200
    assert httpx.get(f"{url}/api/settings", headers=alice, timeout=30).json()["Comfy.ColorPalette"] == "light"
    assert "Comfy.ColorPalette" not in httpx.get(f"{url}/api/settings", headers=bob, timeout=30).json()

    saved = httpx.post(f"{url}/api/userdata/workflows%2Fmine.json?full_info=true", headers=alice, content=workflow, timeout=30)
    assert saved.status_code == 200 and saved.json()["path"] == "workflows/mine.json" and saved.json()["size"] == len(workflow)
    assert httpx.get(f"{url}/api/userdata/workflows%2Fmine.json", headers=alice, timeout=30).content == workflow
    listed = httpx.get(f"{url}/api/userdata", params={"dir": "workflows", "recurse": "true"}, headers=alice, timeout=30)
    assert listed.json() == ["mine.json"]
    assert httpx.get(f"{url}/api/userdata/workflows%2Fmine.json", headers=bob, timeout=30).status_code == 404
    assert httpx.get(f"{url}/api/userdata", params={"dir": "workflows"}, headers=bob, timeout=30).status_code == 404

    again = httpx.post(f"{url}/api/userdata/workflows%2Fmine.json?overwrite=false", headers=alice, content=b"{}", timeout=30)
    assert again.status_code == 409 and "mine.json" in again.text
    escape = httpx.post(f"{url}/api/userdata/..%2F..%2Fkeys.yaml", headers=alice, content=b"x", timeout=30)
    assert escape.status_code == 400 and "keys.yaml" in escape.text
    big = httpx.post(f"{url}/api/userdata/workflows%2Fbig.json", headers=alice, content=b"x" * (MAX_FILE + 1), timeout=30)
    assert big.status_code == 413 and "COMFYBENTO_USERDATA_MAX_BYTES" in big.text
    moved = httpx.post(f"{url}/api/userdata/workflows%2Fmine.json/move/workflows%2Frenamed.json", headers=alice, timeout=30)
    assert moved.status_code == 200 and moved.json() == "workflows/renamed.json"
    assert httpx.delete(f"{url}/api/userdata/workflows%2Frenamed.json", headers=bob, timeout=30).status_code == 404
    assert httpx.delete(f"{url}/api/userdata/workflows%2Frenamed.json", headers=alice, timeout=30).status_code == 204


def _wait(driver: Any, script: str, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.3).until(lambda d: d.execute_script(f"return {script};"))
    except TimeoutException:
        state = driver.execute_script("return [location.href, document.title, document.body.innerText.slice(0, 300)];")
        raise AssertionError(f"timed out waiting for {what}; the page: {state}") from None


def test_the_editor_opens_a_workflow_and_runs_it_in_chromium(site, browser):  # noqa: F811 (the imported fixture)
    from selenium.webdriver.common.by import By

    url, keys = site
    # alice has been through the editor's first-run tour: her settings say so (the editor reads them from the server)
    httpx.post(f"{url}/api/settings", headers=_as(keys["alice"]), timeout=30,
               json={"Comfy.TutorialCompleted": True, "Comfy.VueNodes.AutoScaleLayout": False})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{url}/comfy/")
        assert browser.current_url.endswith("/comfy/login")
        browser.find_element(By.ID, "key").send_keys(keys["alice"])
        browser.find_element(By.ID, "open").click()
        # the node library is /object_info's: every class it lists, with this server's own model files as choices
        _wait(browser, "!!(window.app?.graph && window.LiteGraph?.registered_node_types?.KSampler)", "the editor's node library")
        # a custom node module's web folder: /extensions lists its script, the editor imports it and runs its setup()
        loaded = _wait(browser, "window.comfybentoTestExtension", "the custom node's frontend extension")
        assert loaded == "loaded from extensions/comfybento_web_test/test_extension.js", loaded
        object_info = httpx.get(f"{url}/object_info", headers=_as(keys["alice"]), timeout=30).json()
        registered = browser.execute_script("return Object.keys(LiteGraph.registered_node_types);")
        assert set(object_info) <= set(registered), sorted(set(object_info) - set(registered))[:10]
        choices = browser.execute_script(
            "return LiteGraph.createNode('CheckpointLoaderSimple').widgets.find(w => w.name === 'ckpt_name').options.values;")
        assert choices == object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]

        # open the workflow with the editor's own loader, then press Run
        browser.execute_script(
            "window.__seen = []; const api = window.comfyAPI.api.api;"
            "for (const t of ['progress', 'executed', 'execution_success', 'execution_error'])"
            "  api.addEventListener(t, e => window.__seen.push([t, e.detail]));"
            "return app.loadGraphData(JSON.parse(arguments[0]));", UI_WORKFLOW.read_text())
        _wait(browser, "app.graph.getNodeById(9)?.type === 'SaveImage'", "the workflow to open")
        browser.execute_script("app.graph.getNodeById(3).widgets.find(w => w.name === 'steps').value = 3;")
        run = browser.find_element(By.XPATH, "//button[.//span[normalize-space()='Run']]")
        run.click()
        outcome = _wait(browser, "window.__seen.map(e => e[0]).find(t => t.startsWith('execution_'))", "the run to finish")
        seen = browser.execute_script("return window.__seen;")
        assert outcome == "execution_success", [e for e in seen if e[0] == "execution_error"]
        steps = [e[1]["value"] for e in seen if e[0] == "progress" and e[1]["node"] == "3"]
        assert steps == [1, 2, 3], steps
        [executed] = [e[1] for e in seen if e[0] == "executed"]
        assert executed["node"] == "9" and len(executed["output"]["images"]) == 1

        # the image shows in the Save Image node, loaded by the page from /comfy/api/view with its cookie
        browser.execute_script("app.extensionManager.command.execute('Comfy.Canvas.FitView'); app.canvas.setDirty(true, true);")
        shown = _wait(browser, "(() => { const i = app.graph.getNodeById(9).imgs?.[0];"
                               " return i?.complete && i.naturalWidth > 0 && [i.src, i.naturalWidth, i.naturalHeight]; })()",
                      "the output image in the Save Image node")
        src, width, height = shown
        assert (width, height) == (128, 128) and "/comfy/api/view?" in src  # the workflow's 128² latent, upscale bypassed
        image = httpx.get(src, headers=_as(keys["alice"]), timeout=30)
        assert png_array(image.content).shape[:2] == (128, 128)
        assert httpx.get(src, headers=_as(keys["bob"]), timeout=30).status_code == 404  # alice's output, not bob's
        prompt_id = executed.get("prompt_id") or next(e[1]["prompt_id"] for e in seen if e[0] == "execution_success")
        history = httpx.get(f"{url}/history/{prompt_id}", headers=_as(keys["alice"]), timeout=30).json()
        assert history[prompt_id]["status"]["completed"] is True
        time.sleep(0.5)  # the canvas draws the image into the node before the screenshot
        browser.save_screenshot(str(SCREENSHOT))

        # a graph that matches no served workflow (a second preview): ComfyUI's 400, which the editor shows as ComfyUI's
        browser.execute_script("const p = LiteGraph.createNode('PreviewImage'); app.graph.add(p);"
                               "app.graph.getNodeById(8).connect(0, p, 0);")
        run.click()
        _wait(browser, "document.body.innerText.includes('matches no served workflow')", "the editor's error dialog")
    finally:
        browser.save_screenshot(str(SCREENSHOT.with_name("editor-last.png")))  # the page as the test left it
