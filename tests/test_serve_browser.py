"""The page in a real headless browser: Debian's chromium driven by Playwright for Python.

Playwright is launched with ``executable_path`` pointing at the apt-installed
binary; ``playwright install`` (a download) is never used. Without chromium or
Playwright the tests fail under CI (``CI=true``) and skip elsewhere.

Screenshots go to the test's temporary folder, and to ``$FTSPL_SCREENSHOTS``
when that is set, so a person can look at what the page shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("torch")  # the exported_models fixture exports with torch

from conftest import run_ftspl
from test_serve_live import photo_bytes, running_server, write_meshes

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI; `make setup` installs it (apt chromium, pip playwright)")
    pytest.skip(f"{what} is not installed here")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (Python)")
    if not Path(CHROMIUM).exists():
        _missing(f"chromium ({CHROMIUM})")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory, exported_models, gl_available) -> Path:
    root = tmp_path_factory.mktemp("browser")
    h = root / "home"
    shutil.copytree(exported_models, h / "models")
    write_meshes(root / "gallery", "boxes", 3)
    write_meshes(root / "gallery", "crates", 2, first=3)
    r = run_ftspl(h, "index", "add", str(root / "gallery"), "--json")
    assert r.returncode == 0, r.stderr
    return h


def save(page, tmp_path: Path, name: str, **kw) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), **kw)
    extra = os.environ.get("FTSPL_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / name)
    return out


def all_thumbnails_loaded(page) -> bool:
    return page.evaluate("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")


def test_upload_photos_see_hits_views_and_errors(browser, home, tmp_path):
    photo = tmp_path / "chair photo.jpg"
    photo.write_bytes(photo_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    with running_server(home) as (base, _):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelector('#library').textContent.includes('5 shapes')")
        assert "efficientnet_lite0" in page.inner_text("#library")

        page.set_input_files("#photos", [str(photo)])
        page.wait_for_selector(".hit img, .hit .no-preview")
        page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete)")
        cards = page.locator(".hit")
        assert cards.count() == 5 and page.locator(".hit .no-preview").count() == 0
        assert all_thumbnails_loaded(page)
        first = cards.nth(0).inner_text()
        assert "#1" in first and "distance" in first and ("boxes" in first or "crates" in first) and ".obj" in first
        save(page, tmp_path, "serve-results.png", full_page=True)

        # open a hit with the keyboard: its views and metadata; Escape closes and gives focus back
        cards.nth(0).focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#detail[open]")
        page.wait_for_function("() => document.querySelector('#detail-views').naturalWidth > 0")
        page.wait_for_function("() => document.querySelector('#detail-meta').textContent.includes('faces')")
        assert "/gallery/" in page.inner_text("#detail-meta")
        save(page, tmp_path, "serve-detail.png")
        page.keyboard.press("Escape")
        page.wait_for_selector("#detail:not([open])", state="attached")
        assert page.evaluate("document.activeElement.classList.contains('hit')")

        # a file that is not an image: a clear message naming it, the other answers stay
        page.set_input_files("#photos", [str(notes)])
        alert = page.locator(".result .message.error:not([hidden])")
        alert.wait_for()
        text = alert.inner_text()
        assert "notes.txt" in text and "not a readable image" in text
        assert page.locator(".hit").count() == 5
        save(page, tmp_path, "serve-error.png", full_page=True)

        # a phone-sized screen: the grid has two columns and nothing overflows sideways
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("getComputedStyle(document.querySelector('.hits')).gridTemplateColumns.split(' ').length") == 2
        save(page, tmp_path, "serve-phone.png", full_page=True)
        assert not errors, errors
        page.close()


def test_dropped_photo_and_busy_server(browser, home, tmp_path):
    """A photo dropped on the page is asked; a server that stays busy gets a clear message after the retries."""
    import base64
    import json

    with running_server(home) as (base, _):
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelector('#library').textContent.includes('5 shapes')")
        page.evaluate(
            """b64 => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
                document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
            }""",
            base64.b64encode(photo_bytes()).decode(),
        )
        page.wait_for_function("() => [...document.querySelectorAll('.hit img')].length === 5 && "
                               "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(".result-title").first.inner_text() == "dropped.jpg"

        busy = {"error": "server busy: 18 queries running or waiting (limit 18); retry in a second", "status": 503}
        page.route("**/api/query", lambda route: route.fulfill(status=503, headers={"Retry-After": "1"},
                                                               content_type="application/json", body=json.dumps(busy)))
        page.set_input_files("#photos", [{"name": "later.jpg", "mimeType": "image/jpeg", "buffer": photo_bytes()}])
        alert = page.locator(".result .message.error:not([hidden])")
        alert.wait_for(timeout=20_000)  # four tries, one second apart
        assert alert.inner_text().startswith("The server is busy: 18 queries") and "tried 4 times" in alert.inner_text()
        save(page, tmp_path, "serve-busy.png", full_page=True)
        page.close()


def test_keyboard_reaches_the_picker_and_the_token_flow_loads_thumbnails(browser, home, tmp_path):
    token = "browser-token-0123456789"
    photo = tmp_path / "p.jpg"
    photo.write_bytes(photo_bytes())
    with running_server(home, "--token", token) as (base, _):
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.goto(base + "/")
        page.wait_for_selector("#token-form:not([hidden])")  # the API said 401: the page asks
        page.fill("#token", token)
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.querySelector('#library').textContent.includes('5 shapes')")
        for _ in range(10):  # Tab from the top of the page reaches the file picker
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "photos":
                break
        assert page.evaluate("document.activeElement.id") == "photos"
        page.set_input_files("#photos", [str(photo)])
        page.wait_for_selector(".hit img")
        page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(".hit").count() == 5
        # thumbnails came with the token (blob URLs), not as plain <img> requests that would get 401
        assert page.evaluate("[...document.querySelectorAll('.hit img')].every(i => i.src.startsWith('blob:'))")
        page.close()
