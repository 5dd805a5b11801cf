"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright against the
app served by uvicorn on 127.0.0.1 (a real SQLite store and MLflow registry).

Screenshots of every page go to ``$ANOMALY_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_site import PASSWORD, build_site

from anomaly import store
from anomaly.pipeline import store_engine

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
    ),
]


def _artifacts() -> Path:
    folder = Path(os.environ.get("ANOMALY_ARTIFACTS", Path(__file__).parent / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    if "ANOMALY_ARTIFACTS" not in os.environ:
        (folder / ".gitignore").write_text("*\n")  # test output, never committed
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """The dashboard served by uvicorn in a thread on a free port."""
    import uvicorn

    from anomaly.dashboard import create_app

    config = build_site(tmp_path_factory.mktemp("browser"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", config
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def _shot(page: object, name: str, shots: list[Path]) -> None:
    path = _artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shots.append(path)


def test_review_a_record_in_the_browser(site, browser, capsys: pytest.CaptureFixture) -> None:
    base, config = site
    shots: list[Path] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)

    page.goto(f"{base}/queue")
    assert "/login" in page.url  # reads are not open in this config
    _shot(page, "01-login", shots)
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/queue")
    assert page.locator("#reviewer").inner_text() == "ann"
    rows = page.locator("table.queue tbody tr")
    assert rows.count() == 50
    _shot(page, "02-queue", shots)

    # keyboard: j selects the second row, Enter opens it
    second_href = rows.nth(1).get_attribute("data-href")
    page.keyboard.press("j")
    assert "selected" in (rows.nth(1).get_attribute("class") or "")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}{second_href}")
    first_record = page.url
    assert page.locator("#current-label").inner_text() == "not reviewed"
    _shot(page, "03-record", shots)

    # confirm with the button, with a note; reload: the label persists
    page.fill("#note", "amount far outside the card's range")
    page.click("#confirm")
    page.wait_for_selector("text=Saved: confirmed")
    page.reload()
    assert page.locator("#current-label").inner_text() == "confirmed"
    assert "ann" in page.locator("#review-log").inner_text()
    _shot(page, "04-record-confirmed", shots)

    # keyboard: n opens the next record, c confirms it, reload shows it
    page.keyboard.press("n")
    page.wait_for_function(f"window.location.href !== {first_record!r}")
    page.wait_for_load_state()
    second_record = page.url
    page.keyboard.press("c")
    page.wait_for_selector("text=Saved: confirmed")
    page.reload()
    assert page.locator("#current-label").inner_text() == "confirmed"

    # Shift+F: false positive, then the next record opens
    page.keyboard.press("Shift+F")
    page.wait_for_function(f"!window.location.href.startsWith({second_record!r})")
    page.wait_for_load_state()
    assert page.locator("#current-label").inner_text() == "not reviewed"

    labels = {r.label for r in store.current_labels(store_engine(config)).itertuples()}
    assert labels == {"confirmed", "false_positive"}
    reviewers = set(store.current_labels(store_engine(config))["reviewer"])
    assert reviewers == {"ann"}

    for name, path in (("05-batches", "/batches"), ("06-batch", "/batches/batch-002.parquet"),
                       ("07-model", "/model"), ("08-api-docs", "/docs")):  # fmt: skip
        page.goto(base + path)
        assert page.locator("h1").count() == 1
        _shot(page, name, shots)

    page.goto(f"{base}/queue")
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    _shot(page, "09-keyboard-help", shots)
    context.close()
    with capsys.disabled():
        print("\nscreenshots:\n" + "\n".join(f"  {p}" for p in shots))


def test_anonymous_posts_are_refused(site, browser) -> None:
    base, config = site
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/login")  # a CSRF cookie, but no session
    csrf = next(c["value"] for c in context.cookies() if c["name"] == "anomaly_csrf")
    rows, _ = store.queue(store_engine(config), store.QueueFilter(label="unreviewed"), limit=1)
    record = rows[0]
    form = context.request.post(
        f"{base}/records/{record.batch_id}/{record.record_id}/review",
        form={"label": "confirmed", "csrf": csrf},
    )
    assert form.status == 403
    api = context.request.post(
        f"{base}/api/reviews",
        data={"batch_id": record.batch_id, "record_id": record.record_id, "label": "confirmed"},
    )
    assert api.status == 401
    assert store.reviews_of(store_engine(config), record.batch_id, record.record_id) == []
    context.close()
