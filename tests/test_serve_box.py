"""The page's box: drag a rectangle on a result's photo to ask again with only that part.

Debian's chromium driven by Playwright for Python (``executable_path``; never
``playwright install``), as in ``tests/test_serve_browser.py``, whose fixtures
(the browser, a home with five indexed boxes) this file reuses.
"""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("torch")  # the exported_models fixture exports with torch

from test_serve_browser import browser, home, save  # noqa: F401 - fixtures
from test_serve_live import photo_bytes, running_server

pytestmark = pytest.mark.slow


#: records the ``box`` field of every query the page sends (Chromium does not hand Playwright the body of a
#: multipart request that carries a file, so the form is read where the page builds it)
RECORD_BOXES = """
window.__boxes = [];
const sent = window.fetch;
window.fetch = (url, options) => {
  if (String(url).includes("api/query") && options && options.body instanceof FormData)
    window.__boxes.push(options.body.get("box"));
  return sent(url, options);
};
"""


def _boxes(page) -> list[str | None]:
    """The ``box`` field of each query sent so far (None: the whole photo)."""
    return page.evaluate("() => window.__boxes")


def _near(got: list[float], want: list[float], tol: float) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


def test_drag_a_box_on_the_photo_asks_with_that_part_and_draws_it(browser, home, tmp_path):  # noqa: F811
    photo = tmp_path / "room.jpg"
    photo.write_bytes(photo_bytes())  # 200 x 160, a brown block from (70, 40) to (130, 120)
    with running_server(home) as (base, _):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.add_init_script(RECORD_BOXES)
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelector('#library').textContent.includes('5 shapes')")
        page.select_option("#regions", "none")  # the whole box, not windows of it: each hit's region is the box
        with page.expect_request("**/api/query"):
            page.set_input_files("#photos", [str(photo)])
        assert _boxes(page) == [None]  # the whole photo
        page.wait_for_function("() => document.querySelectorAll('.hit img').length === 5")
        img = page.locator(".result .query-photo").first
        page.wait_for_function("() => document.querySelector('.result .query-photo').naturalWidth === 200")
        assert "Drag a box" in page.locator(".result .box-hint").first.inner_text()
        r = img.bounding_box()
        sx, sy = r["width"] / 200, r["height"] / 160  # screen pixels per photo pixel

        # a click (no drag) asks nothing
        page.mouse.click(r["x"] + 20 * sx, r["y"] + 20 * sy)
        assert page.locator(".result").count() == 1 and _boxes(page) == [None]

        # drag from the block's top left to its bottom right: one request with that box
        with page.expect_response("**/api/query") as answered:
            page.mouse.move(r["x"] + 70 * sx, r["y"] + 40 * sy)
            page.mouse.down()
            page.mouse.move(r["x"] + 100 * sx, r["y"] + 80 * sy, steps=4)
            assert page.locator(".result .box.draft").count() == 1  # the rectangle follows the pointer
            page.mouse.move(r["x"] + 130 * sx, r["y"] + 120 * sy, steps=4)
            page.mouse.up()
        assert len(_boxes(page)) == 2, _boxes(page)
        sent = _boxes(page)[1]
        assert sent is not None, "the request carried no box"
        box = [float(v) for v in sent.split(",")]
        assert _near(box, [70, 40, 130, 120], tol=2 / min(sx, sy) + 1), box
        answer = answered.value.json()
        assert answer["hits"] and all(h["region"] == dict(zip(("x0", "y0", "x1", "y1"), map(int, box)))
                                      for h in answer["hits"])  # the server searched that part and says so

        # the new result names the box and draws it on its photo, where it was dragged
        page.wait_for_function("() => document.querySelectorAll('.result').length === 2 && "
                               "document.querySelectorAll('.result')[0].querySelectorAll('.hit').length === 5")
        newest = page.locator(".result").first
        assert f"box {sent}" in newest.locator(".result-title").inner_text()
        assert "searched the box" in newest.locator(".result-status").inner_text()
        assert page.locator(".result .box.draft").count() == 0
        drawn = newest.locator(".photo-frame .box")
        assert drawn.count() == 1
        page.wait_for_function("() => document.querySelector('.result .photo-frame .box').getBoundingClientRect().width > 0")
        shown = newest.locator(".query-photo").bounding_box()
        b = drawn.bounding_box()
        ksx, ksy = shown["width"] / 200, shown["height"] / 160
        got = [(b["x"] - shown["x"]) / ksx, (b["y"] - shown["y"]) / ksy,
               (b["x"] + b["width"] - shown["x"]) / ksx, (b["y"] + b["height"] - shown["y"]) / ksy]
        assert _near(got, box, tol=4 / min(ksx, ksy)), (got, box)
        assert page.locator(".result").nth(1).locator(".photo-frame .box").count() == 0  # the first stays whole
        save(page, tmp_path, "serve-box.png", full_page=True)
        assert not errors, errors
        page.close()
