"""The web page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The page must list the served variants, send the chosen one, and show exactly the bytes the API returns; a
bad file fails on its own card while the others finish. Without Chromium this skips, except under CI, which
installs it (`apt-get install -y chromium chromium-driver`) and so must run it.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import CALIBRATION, ROOT
from .serve_util import Server, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PHOTO = CALIBRATION / "chelsea.png"
SCREENSHOT_COPY = Path("/tmp/cutq-page.png")  # for a person to look at
WAIT = 60  # seconds for a card; u2net takes ~3 s for chelsea on a busy 2-core machine

def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    reason = f"{reason} (apt-get install -y chromium chromium-driver)"
    if _in_ci():
        pytest.fail(f"CI must run the page test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed in this environment")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path too, Selenium Manager never downloads anything
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--model", "u2netp", "--model", "u2net") as running:  # tests using it are marked slow
        yield running


def _open(driver, server: Server) -> None:
    """Load the page fresh and wait until it has the variants (the select is enabled once /v1/models answered)."""
    driver.get(f"{server.url}/")
    _until(driver, lambda d: d.find_element("id", "model").is_enabled(), 20, "the model list to load")


def _until(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, f"timed out waiting for {what}")


def _finished_cards(driver, count: int) -> list:
    def finished(d):
        cards = d.find_elements("css selector", ".card")
        states = [c.get_attribute("data-status") for c in cards]
        return cards if len(cards) == count and all(s in ("done", "error") for s in states) else False

    return _until(driver, finished, WAIT, f"{count} card(s) to finish")


def _blob_bytes(driver, img) -> bytes:
    """The bytes behind an <img>'s object URL, read inside the page."""
    encoded = driver.execute_async_script("""
        const [img, done] = arguments;
        fetch(img.src).then((r) => r.arrayBuffer()).then((buffer) => {
          const bytes = new Uint8Array(buffer);
          let text = "";
          for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          done(btoa(text));
        }).catch((err) => done("ERROR " + err));
    """, img)
    assert not encoded.startswith("ERROR"), encoded
    return base64.b64decode(encoded)


def _script_errors(driver) -> list[str]:
    """Severe console entries other than the browser's own line for each 4xx response."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def _mb(size: int) -> str:
    return f"{size / 1e6:.{1 if size < 1e7 else 0}f} MB"


def _screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 120, 900), 4000))
    driver.save_screenshot(str(path))
    shutil.copyfile(path, SCREENSHOT_COPY)


@pytest.mark.slow  # the `server` fixture loads u2net
def test_dropdown_lists_the_variants_with_size_and_fidelity(browser, server: Server) -> None:
    from selenium.webdriver.support.ui import Select

    served = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    _open(browser, server)
    select = Select(browser.find_element("id", "model"))
    texts = {o.get_attribute("value"): o.text for o in select.options}
    assert list(texts) == ["u2netp", "u2net"]
    for info in served:
        assert _mb(info["size_bytes"]) in texts[info["name"]], texts
        assert "FP32 reference" in texts[info["name"]], texts  # both are FP32 releases: no SSIM to show
    assert select.first_selected_option.get_attribute("value") == "u2netp"  # the server's default
    assert browser.find_element("id", "server-status").text == "Ready"
    assert _script_errors(browser) == []


@pytest.mark.slow  # the `server` fixture loads u2net
def test_the_cutout_is_the_apis_bytes_for_the_chosen_model(browser, server: Server) -> None:
    from selenium.webdriver.support.ui import Select

    _open(browser, server)
    Select(browser.find_element("id", "model")).select_by_value("u2net")  # not the default: the page must send it
    browser.find_element("id", "files").send_keys(str(PHOTO))
    [card] = _finished_cards(browser, 1)
    assert card.get_attribute("data-status") == "done", card.text
    img = card.find_element("css selector", "img.cutout")
    shown = _blob_bytes(browser, img)

    direct = httpx.post(f"{server.url}/v1/cutout", params={"model": "u2net"},
                        files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/png")}, timeout=120)
    assert direct.status_code == 200, direct.text
    assert direct.headers["x-cutq-model"] == "u2net"
    assert shown == direct.content  # the very bytes, not a re-encoding (and u2net's, not u2netp's)

    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0  # it renders
    link = card.find_element("css selector", "a.download")
    assert link.get_attribute("download") == "chelsea-cutout.png"
    assert link.get_attribute("href") == img.get_attribute("src")
    meta = card.find_element("css selector", ".meta").text
    assert "u2net" in meta and " ms on the server" in meta and "round trip" in meta, meta
    assert _script_errors(browser) == []


@pytest.mark.slow  # the `server` fixture loads u2net
def test_a_bad_file_fails_on_its_own_card_and_the_photo_still_finishes(browser, server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes((ROOT / "README.md").read_bytes())  # text named like an image: only the server can tell
    _open(browser, server)
    browser.find_element("id", "files").send_keys(f"{bad}\n{PHOTO}")
    cards = _finished_cards(browser, 2)
    by_name = {c.find_element("css selector", "h3").text: c for c in cards}
    assert by_name["notes.png"].get_attribute("data-status") == "error"
    message = by_name["notes.png"].find_element("css selector", ".error-message").text
    assert "not an image" in message, message  # the server's JSON error, shown as it is
    assert by_name["notes.png"].find_elements("css selector", "img.cutout") == []
    assert by_name["chelsea.png"].get_attribute("data-status") == "done", by_name["chelsea.png"].text
    assert by_name["chelsea.png"].find_element("css selector", ".meta .model").text == "u2netp"  # the default
    _screenshot(browser, tmp_path / "cutq-page.png")
    assert SCREENSHOT_COPY.stat().st_size > 10_000

    # The options reach the server too: the mask of the same photo, as the API gives it.
    browser.find_element("id", "only-mask").click()
    browser.find_element("id", "files").send_keys(str(PHOTO))
    card = _finished_cards(browser, 3)[-1]
    assert card.get_attribute("data-status") == "done", card.text
    mask = _blob_bytes(browser, card.find_element("css selector", "img.cutout"))
    direct = httpx.post(f"{server.url}/v1/cutout", params={"only_mask": "true"},
                        files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/png")}, timeout=60)
    assert direct.status_code == 200, direct.text
    assert mask == direct.content
    assert _script_errors(browser) == []


def test_a_server_with_a_token_asks_for_it_and_sends_it(browser, tmp_path: Path) -> None:
    token = "page-test-token"
    with running_server("--model", "u2netp", "--token", token) as locked:
        browser.get(f"{locked.url}/")
        browser.execute_script("localStorage.clear()")
        browser.get(f"{locked.url}/")
        field = _until(browser, lambda d: d.find_element("id", "token") if d.find_element("id", "token").is_displayed()
                       else False, 20, "the token field")
        field.send_keys(token + "\n")
        _until(browser, lambda d: d.find_element("id", "model").is_enabled(), 20, "the model list to load")
        assert browser.execute_script("return localStorage.getItem('cutq-token')") == token
        browser.find_element("id", "files").send_keys(str(PHOTO))
        [card] = _finished_cards(browser, 1)
        assert card.get_attribute("data-status") == "done", card.text
        browser.execute_script("localStorage.clear()")
