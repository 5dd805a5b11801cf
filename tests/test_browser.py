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
from urllib.parse import unquote

import pytest
from dashboard_site import PASSWORD, build_site

from anomaly import store
from anomaly.store import store_engine

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


# ---------------------------------------------------------------------------- triage (issue 19)


def _logged_in(browser: object, base: str) -> tuple[object, object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/queue")
    return context, page


def _keys_on_page(page: object) -> list[tuple[str, str]]:
    values = page.locator('table.queue input[name="key"]').evaluate_all(
        "boxes => boxes.map(b => b.value)"
    )
    return [tuple(unquote(part) for part in v.split("/", 1)) for v in values]


def test_search_by_id_opens_the_record(site, browser) -> None:
    base, _ = site
    context, page = _logged_in(browser, base)
    page.keyboard.press("s")
    page.keyboard.type("b2-r000011")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/records/batch-002.parquet/b2-r000011")
    assert "b2-r000011" in page.locator("h1").inner_text()
    page.fill("#search", "b2-r00001")  # a prefix: the queue of matching ids
    page.press("#search", "Enter")
    page.wait_for_url("**/queue?q=b2-r00001")
    assert page.locator("#position").inner_text() == "1–10 of 10"
    _shot(page, "10-search-prefix", [])
    context.close()


def test_previous_next_and_position(site, browser) -> None:
    base, config = site
    context, page = _logged_in(browser, base)
    total = store.search_count(store_engine(config), store.Search())
    assert total > 100
    page.goto(f"{base}/queue?sort=time_desc")
    assert page.locator("#position").inner_text() == f"1–50 of {total:,}"
    first = _keys_on_page(page)
    page.click("#next-page")
    page.wait_for_url("**after=*")
    assert page.locator("#position").inner_text() == f"51–100 of {total:,}"
    page.keyboard.press("n")
    page.wait_for_function("document.getElementById('position').innerText.startsWith('101')")
    assert page.locator("#position").inner_text() == f"101–{min(total, 150)} of {total:,}"
    page.keyboard.press("p")
    page.wait_for_function("document.getElementById('position').innerText.startsWith('51')")
    page.click("#prev-page")
    page.wait_for_function("document.getElementById('position').innerText.startsWith('1–')")
    assert _keys_on_page(page) == first
    _shot(page, "11-queue-paged", [])
    context.close()


def test_bulk_label_twenty_records_by_keyboard(site, browser) -> None:
    base, config = site
    context, page = _logged_in(browser, base)
    page.goto(f"{base}/queue?label=unreviewed&sort=batch")
    picked = _keys_on_page(page)[:20]
    page.keyboard.press("x")
    for _ in range(19):
        page.keyboard.press("Shift+J")
    assert page.locator("#selected-count").inner_text() == "20 selected"
    _shot(page, "12-queue-bulk-selection", [])
    page.keyboard.press("Shift+C")
    page.wait_for_selector("text=Done: 20 labelled confirmed")
    page.reload()
    engine = store_engine(config)
    for batch_id, record_id in picked:
        assert store.get_record(engine, batch_id, record_id).label == "confirmed"
    log = [store.reviews_of(engine, b, r) for b, r in picked]
    assert [len(entries) for entries in log] == [1] * 20
    assert {e.reviewer for entries in log for e in entries} == {"ann"}
    assert not set(picked) & set(_keys_on_page(page))  # no longer in the unreviewed queue
    context.close()


def test_assignment_filter(site, browser) -> None:
    base, _ = site
    context, page = _logged_in(browser, base)
    page.goto(f"{base}/queue?batch_id=batch-001.parquet&assignee=unassigned&sort=batch")
    picked = _keys_on_page(page)[:3]
    page.keyboard.press("x")
    page.keyboard.press("Shift+J")
    page.keyboard.press("Shift+J")
    page.keyboard.press("Shift+A")  # assign to me (the bar's default)
    page.wait_for_selector("text=Done: 3 assigned to ann")
    assert not set(picked) & set(_keys_on_page(page))  # no longer unassigned
    page.select_option("#filter-assignee", "me")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**assignee=me*")
    assert set(picked) <= set(_keys_on_page(page))
    assert page.locator("td.assignee", has_text="ann").count() == len(_keys_on_page(page))
    _shot(page, "13-queue-assigned-to-me", [])
    context.close()


def test_comment_thread(site, browser) -> None:
    base, _ = site
    context, page = _logged_in(browser, base)
    record = f"{base}/records/batch-000.parquet/b0-r000017"
    page.goto(record)
    assert page.locator("#no-comments").is_visible()
    for text in ("merchant opened last week", "holder confirms the purchase"):
        page.fill("#comment-body", text)
        page.click("#comment-submit")
        page.wait_for_selector(f"#comment-thread >> text={text}")
    page.reload()
    items = page.locator("#comment-thread li").all_inner_texts()
    assert len(items) == 2
    assert "merchant opened last week" in items[0]
    assert "holder confirms the purchase" in items[1]
    assert all("ann" in item for item in items)
    page.locator("#comments").scroll_into_view_if_needed()
    _shot(page, "14-record-comments", [])
    context.close()


def test_overview_chart_has_axes(site, browser) -> None:
    base, _ = site
    context, page = _logged_in(browser, base)
    page.goto(f"{base}/overview?days=30")
    charts = page.locator("svg.day-chart")
    assert charts.count() == 4
    for i in range(4):
        chart = charts.nth(i)
        assert chart.locator("text.x-tick").count() >= 1
        assert chart.locator("text.y-tick").count() >= 2
        assert chart.locator(".point title").count() >= 1
    dates = charts.nth(0).locator("text.x-tick").all_text_contents()
    assert all(len(d) == 10 and d[4] == "-" for d in dates)  # YYYY-MM-DD
    assert charts.nth(0).locator("rect.band").count() >= 1  # the model version in force
    _shot(page, "15-overview", [])
    context.close()


def test_nearest_normal_panel(site, browser) -> None:
    base, config = site
    context, page = _logged_in(browser, base)
    rows, _ = store.queue(store_engine(config), store.QueueFilter(batch_id="real.parquet"))
    page.goto(f"{base}/records/real.parquet/{rows[0].record_id}")
    panel = page.locator("#nearest")
    assert panel.is_visible()
    assert panel.locator("thead th").count() == 2 + 5  # feature, this record, 5 neighbours
    assert panel.locator("tbody tr").count() == 7  # every feature of the model
    assert panel.locator("td.differs").count() >= 1
    panel.scroll_into_view_if_needed()
    _shot(page, "16-record-nearest-normal", [])
    context.close()
