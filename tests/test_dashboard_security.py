"""Dashboard security (issue 17): sessions that end, throttled logins that cannot starve other
requests, no 500 from any query/path/header/cookie (the corpus ``tests/data/bad_requests.json``),
security headers on every response, CSRF tokens bound to the session, CSV exports that a
spreadsheet cannot run. On a real SQLite store and a real MLflow registry; the login flood
runs against a real uvicorn."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from conftest import free_port
from dashboard_site import PASSWORD, TOKEN, build_site, site_settings
from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

from anomaly import store
from anomaly.config import load_config
from anomaly.dashboard import create_app
from anomaly.dashboard.auth import SESSION_COOKIE, Accounts, hash_password
from anomaly.dashboard.throttle import Throttle
from anomaly.store import LoginSession, store_engine
from flows.cli import app as cli

REPO = Path(__file__).resolve().parents[1]
REQUESTS = json.loads((REPO / "tests" / "data" / "bad_requests.json").read_text())
BATCH = "batch-001.parquet"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HEADERS = {
    "content-security-policy": "default-src 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    return build_site(tmp_path_factory.mktemp("dashboard-security"))


def accounts_of(config, users: dict[str, str] | None = None) -> Accounts:
    """The site's reviewers with a fixed session key (as from $ANOMALY_DASHBOARD_SECRET)."""
    return Accounts(users or dict(config.dashboard.users), dict(config.dashboard.tokens),
                    b"k" * 32, 3600)  # fmt: skip


def app_client(config, accounts: Accounts | None = None) -> TestClient:
    app = create_app(config, engine=store_engine(config), accounts=accounts or accounts_of(config))
    return TestClient(app, raise_server_exceptions=False)


def csrf(client: TestClient) -> str:
    """The CSRF token the pages give this client."""
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)


def login(client: TestClient, user: str = "ann", password: str = PASSWORD) -> httpx.Response:
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf": csrf(client)},
        follow_redirects=False,
    )


def review(client: TestClient, record: str, token: str | None = None) -> int:
    body = {"batch_id": BATCH, "record_id": record, "label": "unsure"}
    headers = {"X-CSRF-Token": token if token is not None else csrf(client)}
    return client.post("/api/reviews", json=body, headers=headers).status_code


def assert_secure_headers(response: httpx.Response) -> None:
    for name, value in HEADERS.items():
        assert value in response.headers.get(name, ""), (name, response.status_code)


# ---------------------------------------------------------------------------- sessions that end


def test_logout_ends_the_session_even_for_a_copied_cookie(config) -> None:
    client = app_client(config)
    assert login(client).status_code == 303
    stolen = client.cookies[SESSION_COOKIE]
    assert review(client, "b1-r000010") == 201
    thief = app_client(config)
    thief.cookies.set(SESSION_COOKIE, stolen)
    assert thief.get("/queue", follow_redirects=False).status_code == 200
    assert client.post("/logout", data={"csrf": csrf(client)}).status_code == 200
    assert thief.get("/queue", follow_redirects=False).status_code == 303  # to the login form
    assert review(thief, "b1-r000010") == 401
    assert [r.reviewer for r in store.reviews_of(store_engine(config), BATCH, "b1-r000010")] == [
        "ann"
    ]


def test_a_new_password_ends_the_old_sessions(config) -> None:
    client = app_client(config)
    login(client)
    assert client.get("/api/flagged").status_code == 200
    changed = accounts_of(config, {"ann": hash_password("a new password", 1000)})
    after = app_client(config, changed)  # the dashboard restarted with ann's new hash
    after.cookies.set(SESSION_COOKIE, client.cookies[SESSION_COOKIE])
    assert after.get("/api/flagged").status_code == 401
    assert login(after, password="a new password").status_code == 303


def test_revoking_a_reviewer_ends_every_session_of_theirs(config, tmp_path: Path) -> None:
    first, second = app_client(config), app_client(config)
    login(first)
    login(second)
    config_file = Path(config.home).parent / "config.yaml"
    runner = CliRunner()
    listed = runner.invoke(cli, ["sessions", "list", "--config", str(config_file)])
    assert listed.exit_code == 0, listed.output
    assert "ann" in listed.output
    revoked = runner.invoke(cli, ["sessions", "revoke", "ann", "--config", str(config_file)])
    assert revoked.exit_code == 0, revoked.output
    assert "ended" in revoked.output
    for client in (first, second):
        assert client.get("/api/flagged").status_code == 401
    refused = runner.invoke(cli, ["sessions", "revoke", "--config", str(config_file)])
    assert refused.exit_code == 2


def test_an_expired_session_is_refused_by_the_server_too(config) -> None:
    accounts = accounts_of(config)
    client = app_client(config, accounts)
    login(client)
    engine = store_engine(config)
    row = [s for s in store.live_sessions(engine) if s.user == "ann"][-1]
    with engine.begin() as conn:  # the row expires; the cookie's own signature is still young
        conn.execute(
            update(LoginSession)
            .where(LoginSession.id_hash == row.id_hash)
            .values(expires_at=row.created_at)
        )
    assert client.get("/api/flagged").status_code == 401


# ---------------------------------------------------------------------------- session-bound CSRF


def test_csrf_tokens_work_only_with_their_own_session(config) -> None:
    mine, other = app_client(config), app_client(config)
    login(mine)
    login(other)
    assert review(mine, "b1-r000011", token=csrf(other)) == 403  # another session's token
    assert review(mine, "b1-r000011", token=mine.cookies["anomaly_csrf"]) == 403  # double submit
    anonymous = app_client(config)
    before_login = csrf(anonymous)
    login(anonymous)
    assert review(anonymous, "b1-r000011", token=before_login) == 403  # token of no session
    assert review(mine, "b1-r000011") == 201
    form = {"label": "confirmed", "csrf": csrf(other)}
    assert mine.post(f"/records/{BATCH}/b1-r000011/review", data=form).status_code == 403
    form["csrf"] = csrf(mine)
    assert mine.post(f"/records/{BATCH}/b1-r000011/review", data=form).status_code == 200


# ---------------------------------------------------------------------------- login throttling


def test_throttle_locks_out_backs_off_and_forgets() -> None:
    now = [0.0]
    throttle = Throttle(per_account=3, per_address=10, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.attempt("ann", "1.2.3.4") == 0
    assert throttle.attempt("ann", "1.2.3.4") == 30  # locked: the fourth is not even checked
    assert throttle.attempt("ann", "5.6.7.8") == 30  # per account, from anywhere
    assert throttle.attempt("bob", "1.2.3.4") == 0  # another account is not locked
    throttle.succeeded("bob", "1.2.3.4")
    now[0] = 31
    assert throttle.attempt("ann", "1.2.3.4") == 0  # the lockout ended; this one fails too
    assert throttle.attempt("ann", "1.2.3.4") == 60  # ... and doubled it
    now[0] = 92
    assert throttle.attempt("ann", "1.2.3.4") == 0
    throttle.succeeded("ann", "1.2.3.4")  # right at last: the account's failures are forgotten
    assert throttle.attempt("ann", "1.2.3.4") == 0


def test_throttle_per_address() -> None:
    throttle = Throttle(per_account=100, per_address=3, clock=lambda: 0.0)
    for name in ("a", "b", "c"):
        assert throttle.attempt(name, "9.9.9.9") == 0
    assert throttle.attempt("d", "9.9.9.9") > 0
    assert throttle.attempt("d", "8.8.8.8") == 0


def test_wrong_logins_lock_the_account_out_and_are_logged(config, caplog) -> None:
    client = app_client(config)
    with caplog.at_level(logging.INFO, logger="anomaly.dashboard"):
        for _ in range(config.dashboard.login_failures):
            assert login(client, password="wrong").status_code == 401
        locked = login(client)  # the right password, too late
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert "Too many failed logins" in locked.text
    assert SESSION_COOKIE not in client.cookies
    assert "failed login for 'ann'" in caplog.text
    assert "locked out" in caplog.text
    assert login(client, user="bot-none", password="x").status_code == 401  # others still tried


# ---------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def session_client(config) -> TestClient:
    client = app_client(config)
    assert login(client).status_code == 303
    return client


@pytest.mark.parametrize("case", REQUESTS, ids=[c["name"] for c in REQUESTS])
def test_bad_request_is_refused_with_a_clear_4xx(case, config, session_client) -> None:
    client = session_client if case["auth"] == "session" else app_client(config)
    headers = {"Authorization": BEARER["Authorization"]} if case["auth"] == "bearer" else {}
    extra_cookie = case["headers"].get("Cookie+")
    for name, value in case["headers"].items():
        if name != "Cookie+":
            headers[name] = value.encode()  # non-ASCII values go out as UTF-8 bytes
    if extra_cookie:  # a cookie set beside the session's (e.g. by a sibling domain)
        name, _, value = extra_cookie.partition("=")
        headers["Cookie"] = f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}; {name}={value}"
    body = {"batch_id": BATCH, "record_id": "b1-r000012", "label": "unsure"}
    response = client.request(
        case["method"], case["path"], headers=headers, follow_redirects=False,
        json=body if case["method"] == "POST" else None,
    )  # fmt: skip
    assert response.status_code == case["status"], response.text[:500]
    if "contains" in case:
        assert case["contains"].lower() in response.text.lower()
    assert_secure_headers(response)


def test_a_nul_character_in_a_review_is_refused_not_a_500(config, session_client) -> None:
    body = {"batch_id": BATCH, "record_id": "b1-r000013", "label": "unsure", "note": "a\x00b"}
    api = session_client.post(
        "/api/reviews", json=body, headers={"X-CSRF-Token": csrf(session_client)}
    )
    assert api.status_code == 422
    assert "NUL" in api.text
    form = {"label": "unsure", "note": "a\x00b", "csrf": csrf(session_client)}
    page = session_client.post(f"/records/{BATCH}/b1-r000013/review", data=form)
    assert page.status_code == 422
    assert store.reviews_of(store_engine(config), BATCH, "b1-r000013") == []


def test_the_corpus_covers_queries_paths_headers_and_cookies() -> None:
    assert len(REQUESTS) >= 30
    text = json.dumps(REQUESTS)
    for needle in ("until=9999-12-31", "offset=99999999999999999999", "anomaly_session=",
                   "anomaly_csrf=", "X-CSRF-Token", "cursor="):  # fmt: skip
        assert needle in text


def test_an_unexpected_error_is_a_500_with_the_security_headers(
    config, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken(_engine):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(store, "batches", broken)  # a fault no input can cause
    response = app_client(config).get("/api/batches", headers=BEARER)
    assert response.status_code == 500
    assert "the disk is on fire" not in response.text  # no internals to the client
    assert_secure_headers(response)
    assert "the disk is on fire" in caplog.text  # but in the log


def test_headers_on_pages_errors_and_hsts_only_when_configured(config) -> None:
    client = app_client(config)
    for path, status in (("/login", 200), ("/nope", 404), ("/api/flagged?limit=0", 401)):
        response = client.get(path, headers=BEARER if "limit" not in path else {})
        assert response.status_code == status
        assert_secure_headers(response)
        assert "strict-transport-security" not in response.headers
    tls = config.model_copy(
        update={"dashboard": config.dashboard.model_copy(update={"hsts": True})}
    )
    client = app_client(tls)
    response = client.get("/login")
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert "secure" in response.headers["set-cookie"].lower()


# ---------------------------------------------------------------------------- CSV injection

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx",
            "a\r=cmd|' /C calc'!A0"]  # fmt: skip


def test_csv_exports_neutralise_formulas(config, tmp_path: Path) -> None:
    engine = store_engine(config)
    records = [f"b1-r0000{20 + i}" for i in range(len(FORMULAS))]
    for record, note in zip(records, FORMULAS, strict=True):
        store.add_review(engine, BATCH, record, "confirmed", "ann", note)
    client = app_client(config)
    login(client)
    web = client.get("/export.csv").text
    config_file = Path(config.home).parent / "config.yaml"
    out = tmp_path / "reviews.csv"
    result = CliRunner().invoke(cli, ["export", "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    api = client.get("/api/export?format=csv", headers=BEARER).text
    with out.open(newline="") as handle:
        cli_text = handle.read()
    for text in (web, cli_text, api):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        notes = {row["record_id"]: row["note"] for row in rows}
        for record, note in zip(records, FORMULAS, strict=True):
            assert notes[record] == (note if note.startswith("a") else "'" + note)
        cells = [cell for row in rows for cell in row.values()]
        assert not [c for c in cells if c.startswith(("=", "+", "@", "\t", "\r"))]
        scores = [float(row["log_likelihood"]) for row in rows]  # numbers stay numbers
        assert min(scores) < 0
    parquet = pd.read_parquet(io.BytesIO(client.get("/export.parquet").content))
    assert set(parquet["note"]) >= set(FORMULAS)  # Parquet is data, not a spreadsheet: as typed


# ---------------------------------------------------------------------------- a login flood


def _serve(folder: Path, config) -> tuple[subprocess.Popen, str]:
    """``anomaly dashboard`` in a child process, with ann's real (600,000-iteration) hash and
    the per-address limit raised so every login of the flood is checked: the worst case."""
    settings = yaml.safe_load((Path(config.home).parent / "config.yaml").read_text())
    settings["dashboard"] = site_settings(login_failures_per_address=1000)
    settings["dashboard"]["users"]["ann"] = hash_password(PASSWORD)
    settings["home"] = str(config.home)
    settings["data"] = {k: str(Path(config.home).parent / v) for k, v in settings["data"].items()}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    load_config(path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "dashboard", "--config", str(path),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    msg = f"the dashboard did not start: {server.communicate()[1][-2000:]}"
    raise AssertionError(msg)


#: /api/health answers in ~10 ms; 50 simultaneous wrong logins with PBKDF2 on the shared
#: threadpool held it for 5.4 s (issue 17). One second is far above its normal latency even on a
#: loaded two-core machine and far below what starvation looks like.
HEALTH_BOUND_SECONDS = 1.0
FLOOD = 50


@pytest.mark.slow
def test_a_login_flood_does_not_starve_other_requests(config, tmp_path: Path) -> None:
    server, base = _serve(tmp_path, config)
    try:
        with httpx.Client(base_url=base, timeout=120) as probe:
            token = re.search(r'name="csrf" value="([^"]+)"', probe.get("/login").text).group(1)
            cookies = dict(probe.cookies)
        statuses: list[int] = []
        start = threading.Barrier(FLOOD + 1)

        def wrong_login(i: int) -> None:
            with httpx.Client(base_url=base, timeout=300, cookies=cookies) as c:
                start.wait()
                form = {"username": f"user{i % 8}", "password": "wrong", "csrf": token}
                statuses.append(c.post("/login", data=form).status_code)

        threads = [threading.Thread(target=wrong_login, args=(i,)) for i in range(FLOOD)]
        for t in threads:
            t.start()
        start.wait()
        latencies = []
        with httpx.Client(base_url=base, timeout=60) as health:
            while any(t.is_alive() for t in threads):
                began = time.perf_counter()
                assert health.get("/api/health").status_code == 200
                latencies.append(time.perf_counter() - began)
                time.sleep(0.05)
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(set(statuses)) == [401, 429]  # checked until each account locked out
    assert statuses.count(401) >= 10
    ms = sorted(x * 1000 for x in latencies)
    print(f"\n/api/health during {FLOOD} wrong logins: {len(ms)} probes, median "
          f"{ms[len(ms) // 2]:.0f} ms, max {ms[-1]:.0f} ms")  # fmt: skip
    assert len(latencies) >= 3
    assert max(latencies) < HEALTH_BOUND_SECONDS
