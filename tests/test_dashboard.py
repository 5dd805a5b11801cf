"""The dashboard through FastAPI's test client, on a real SQLite store and a real MLflow
registry (a trained Gaussian model)."""

from __future__ import annotations

import io
import re
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from dashboard_site import PASSWORD, TOKEN, build_site, write_config
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from anomaly import store
from anomaly.config import ConfigError, load_config
from anomaly.dashboard import create_app
from anomaly.dashboard.auth import (
    SESSION_COOKIE,
    Accounts,
    Sessions,
    hash_password,
    verify_password,
)
from anomaly.store import store_engine
from flows.cli import app as cli

BATCH = "batch-001.parquet"
OTHER = "batch-000.parquet"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    return build_site(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def client(config) -> TestClient:
    return TestClient(create_app(config))


def csrf(client: TestClient) -> str:
    """The CSRF token the pages give this client (bound to its session, if any)."""
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)


def login(client: TestClient, user: str = "ann", password: str = PASSWORD) -> None:
    response = client.post(
        "/login",
        data={"username": user, "password": password, "csrf": csrf(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def review_log(config, record_id: str, batch_id: str = BATCH) -> list[tuple[str, str, str]]:
    return [
        (r.label, r.reviewer, r.note)
        for r in store.reviews_of(store_engine(config), batch_id, record_id)
    ]


def test_reads_need_a_login_unless_open(config, client: TestClient) -> None:
    response = client.get("/queue?label=unreviewed", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fqueue%3Flabel%3Dunreviewed"
    assert client.get("/api/flagged").status_code == 401
    assert client.get("/api/health").json()["status"] == "ok"
    login(client)
    assert client.get("/queue").status_code == 200


def test_open_reads_never_open_writes(config, tmp_path: Path) -> None:
    opened = load_config(write_config(tmp_path, open_reads=True))
    opened = opened.model_copy(update={"store": config.store, "home": config.home})
    client = TestClient(create_app(opened))
    assert client.get("/queue").status_code == 200
    assert client.get("/api/flagged").json()["total"] > 0
    client.get("/queue")  # the CSRF cookie
    form = {"label": "confirmed", "csrf": csrf(client)}
    response = client.post(f"/records/{BATCH}/b1-r000000/review", data=form)
    assert response.status_code == 403
    body = {"batch_id": BATCH, "record_id": "b1-r000000", "label": "confirmed"}
    assert client.post("/api/reviews", json=body).status_code == 401
    assert review_log(config, "b1-r000000") == []


def test_a_wrong_password_sets_no_session(client: TestClient) -> None:
    client.get("/login")
    for user, password in (("ann", "wrong"), ("nobody", PASSWORD)):
        response = client.post(
            "/login",
            data={"username": user, "password": password, "csrf": csrf(client)},
        )
        assert response.status_code == 401
        assert "Wrong name or password" in response.text
        assert SESSION_COOKIE not in client.cookies


def test_login_redirects_only_within_the_site(client: TestClient) -> None:
    client.get("/login")
    for target, expected in (("/batches", "/batches"), ("//evil.example", "/queue"),
                             ("https://evil.example", "/queue")):  # fmt: skip
        response = client.post(
            "/login",
            data={"username": "ann", "password": PASSWORD, "next": target,
                  "csrf": csrf(client)},
            follow_redirects=False,
        )  # fmt: skip
        assert response.headers["location"] == expected


def test_a_form_review_is_logged_under_the_session_reviewer(config, client: TestClient) -> None:
    login(client)
    form = {
        "label": "confirmed",
        "note": "card reported stolen",
        "reviewer": "mallory",  # ignored: the reviewer comes from the session
        "csrf": csrf(client),
    }
    response = client.post(f"/records/{BATCH}/b1-r000001/review", data=form)
    assert response.status_code == 200
    assert "Saved: confirmed" in response.text
    assert 'class="label confirmed">confirmed' in response.text
    assert review_log(config, "b1-r000001") == [("confirmed", "ann", "card reported stolen")]


def test_then_next_opens_the_following_record(config, client: TestClient) -> None:
    login(client)
    where = store.QueueFilter(batch_id=OTHER)
    rows, _ = store.queue(store_engine(config), where, limit=4)
    form = {"label": "unsure", "then": "next", "csrf": csrf(client)}
    response = client.post(
        f"/records/{OTHER}/{rows[2].record_id}/review?batch_id={OTHER}",
        data=form,
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith(
        f"/records/{OTHER}/{rows[3].record_id}?batch_id={OTHER}"
    )


def test_form_posts_without_the_csrf_token_are_refused(config, client: TestClient) -> None:
    login(client)
    for token in ("", "forged"):
        response = client.post(
            f"/records/{BATCH}/b1-r000002/review", data={"label": "confirmed", "csrf": token}
        )
        assert response.status_code == 403
    assert review_log(config, "b1-r000002") == []


def test_api_reviews_need_a_valid_token_or_session_and_csrf_header(
    config, client: TestClient
) -> None:
    body = {"batch_id": BATCH, "record_id": "b1-r000003", "label": "false_positive"}
    wrong = client.post("/api/reviews", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    made = client.post("/api/reviews", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert made.status_code == 201
    assert made.json()["reviewer"] == "bot"
    login(client)
    no_header = client.post("/api/reviews", json={**body, "label": "unsure"})
    assert no_header.status_code == 403
    header = {"X-CSRF-Token": csrf(client)}
    with_header = client.post("/api/reviews", json={**body, "label": "unsure"}, headers=header)
    assert with_header.status_code == 201
    assert review_log(config, "b1-r000003") == [
        ("unsure", "ann", ""),
        ("false_positive", "bot", ""),
    ]
    missing = client.post("/api/reviews", json={**body, "record_id": "nope"}, headers=header)
    assert missing.status_code == 404
    bad = client.post("/api/reviews", json={**body, "label": "fraud"}, headers=header)
    assert bad.status_code == 422


def test_api_pages_through_the_whole_queue(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    keys, cursor, total = [], None, None
    while True:
        params = {"limit": 17, "order": "score_desc"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/flagged", params=params, headers=auth).json()
        total = page["total"]
        keys += [(-i["score"], i["batch_id"], i["record_id"]) for i in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(keys) == len(set(keys)) == total > 90
    assert page["total_capped"] is False
    assert keys == sorted(keys)
    filtered = client.get("/api/flagged", params={"batch_id": BATCH}, headers=auth).json()
    assert filtered["total"] == 30
    assert {i["batch_id"] for i in filtered["items"]} == {BATCH}
    assert client.get("/api/flagged?cursor=garbage", headers=auth).status_code == 422
    assert client.get("/api/flagged?label=fraud", headers=auth).status_code == 422


def test_api_record_batches_and_quarantine(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    record = client.get(f"/api/flagged/{BATCH}/b1-r000004", headers=auth).json()
    assert record["record"]["contributions"][0]["feature"] == "amount"
    assert record["record"]["score"] == -record["record"]["log_likelihood"]
    assert client.get(f"/api/flagged/{BATCH}/nope", headers=auth).status_code == 404
    batches = client.get("/api/batches", headers=auth).json()
    assert {b["batch_id"] for b in batches} >= {"real.parquet", BATCH}
    assert [b["shift_alarm"] for b in batches if b["batch_id"] == "batch-002.parquet"] == [True]
    rows = client.get(f"/api/batches/{BATCH}/quarantined", headers=auth).json()
    assert [r["reason"] for r in rows][:2] == ["missing value in amount", "missing id"]


def test_queue_page_filters_and_pages(client: TestClient) -> None:
    login(client)
    page = client.get("/queue")
    assert "next page" in page.text
    next_url = re.search(r'href="(/queue\?after=[^"]+)" id="next-page"', page.text).group(1)
    second = client.get(next_url.replace("&amp;", "&"))
    assert second.status_code == 200
    assert "first page" in second.text
    first_ids = set(re.findall(r'data-href="/records/[^/]+/([^"?]+)', page.text))
    second_ids = set(re.findall(r'data-href="/records/[^/]+/([^"?]+)', second.text))
    assert first_ids
    assert second_ids
    assert not first_ids & second_ids
    only = client.get(f"/queue?batch_id={BATCH}&label=unreviewed")
    assert set(re.findall(r"<td>(batch-\d+\.parquet)</td>", only.text)) == {BATCH}


def test_record_page_shows_why_and_where(client: TestClient) -> None:
    login(client)
    page = client.get(f"/records/{BATCH}/b1-r000005?batch_id={BATCH}").text
    assert 'aria-label="feature contributions in nats"' in page
    assert 'aria-label="calibration score distribution' in page
    assert "held-out normal (calibration) records" in page
    assert "1–99 %" in page  # amount beside its training range
    assert 'id="next-record"' in page
    assert 'id="review-form"' in page


def test_record_page_of_a_real_scored_record_without_contributions(
    config, client: TestClient
) -> None:
    login(client)
    rows, _ = store.queue(store_engine(config), store.QueueFilter(batch_id="real.parquet"))
    assert rows  # the pipeline flagged some of the planted anomalies
    page = client.get(f"/records/real.parquet/{rows[0].record_id}").text
    if rows[0].contributions is None:
        assert "No per-feature contributions were stored" in page
    assert "never seen in training" in page or "% of training rows" in page
    assert 'aria-label="calibration score distribution' in page


def test_record_page_without_a_loadable_model_says_so(config, client: TestClient) -> None:
    from store_data import ID, flagged_frame, quarantined_frame, summary

    s = summary(42, 3, version="99")  # no such registered version
    engine = store_engine(config)
    store.write_batch(engine, s, "tx-dash", flagged_frame(42, 3), quarantined_frame(42), ID)
    login(client)
    page = client.get(f"/records/{s.batch_id}/b42-r000000")
    assert page.status_code == 200
    assert "model version 99 could not be loaded" in page.text
    assert 'aria-label="feature contributions in nats"' in page.text


def test_batches_and_batch_pages(client: TestClient) -> None:
    login(client)
    page = client.get("/batches").text
    assert 'aria-label="flag rate per batch against alpha"' in page
    assert "shift alarm" in page
    batch = client.get(f"/batches/{BATCH}").text
    assert "missing value in amount" in batch
    assert "amount is ±inf" in batch
    assert client.get("/batches/nope").status_code == 404


def test_model_page_shows_champion_metrics_and_history(client: TestClient) -> None:
    login(client)
    page = client.get("/model").text
    assert 'class="alias champion">champion' in page
    assert "heldout_log_likelihood" in page
    assert 'id="history"' in page
    model = client.get("/api/model").json()
    assert model["error"] is None
    assert model["versions"][0]["version"] == "1"
    assert {e["alias"] for e in model["history"]} >= {"champion", "challenger"}


def test_model_page_with_mlflow_unreachable(config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    down = config.model_copy(
        update={
            "mlflow": config.mlflow.model_copy(update={"tracking_uri": f"http://127.0.0.1:{port}"})
        }
    )
    client = TestClient(create_app(down, engine=store_engine(config)))
    login(client)
    start = time.perf_counter()
    page = client.get("/model")
    assert page.status_code == 200
    assert 'id="registry-error"' in page.text
    record = client.get(f"/records/{BATCH}/b1-r000006")
    assert record.status_code == 200
    assert 'id="model-unavailable"' in record.text
    assert time.perf_counter() - start < 60  # degraded, not hung


def test_export_downloads(config, client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"batch_id": BATCH, "record_id": "b1-r000007", "label": "confirmed", "note": "x,y"}
    assert client.post("/api/reviews", json=body, headers=auth).status_code == 201
    csv = client.get("/api/export", headers=auth)
    assert csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(csv.text))
    row = frame[frame["record_id"] == "b1-r000007"].iloc[0]
    assert (row["label"], row["reviewer"], row["note"]) == ("confirmed", "bot", "x,y")
    login(client)
    parquet = client.get("/export.parquet")
    assert set(pd.read_parquet(io.BytesIO(parquet.content))["record_id"]) >= {"b1-r000007"}


def test_api_docs_are_served_without_a_cdn(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/flagged", "/api/reviews", "/api/export"} <= set(spec["paths"])
    docs = client.get("/docs").text
    assert "/api/reviews" in docs
    assert "cdn" not in docs.lower()
    assert client.get("/static/app.js").status_code == 200


def test_security_headers(client: TestClient) -> None:
    response = client.get("/login")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_sessions_are_signed_and_expire(config) -> None:
    engine = store_engine(config)
    accounts = Accounts({"ann": hash_password("pw-123456", 1000)}, {}, b"k" * 32, 3600)
    sessions = Sessions(accounts, engine)
    cookie = sessions.start("ann")
    assert sessions.user(cookie) == "ann"
    assert sessions.user(cookie[:-4] + "AAAA") is None  # signature
    assert Sessions(Accounts(accounts.users, {}, b"x" * 32, 3600), engine).user(cookie) is None
    expired = Sessions(Accounts(accounts.users, {}, b"k" * 32, -1), engine)
    assert expired.user(expired.start("ann")) is None
    assert Sessions(Accounts({}, {}, b"k" * 32, 3600), engine).user(cookie) is None  # removed


def test_password_hashes_verify_and_differ() -> None:
    a, b = hash_password("pw-123456", 1000), hash_password("pw-123456", 1000)
    assert a != b  # salted
    assert verify_password("pw-123456", a)
    assert not verify_password("pw-1234567", a)


def test_plain_text_secrets_in_the_config_are_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("ann: pbkdf2_sha256", "ann: xpbkdf2_sha256"))
    with pytest.raises(ConfigError, match=r"secrets of \['ann'\] are not hashes"):
        load_config(path)


def test_reviewers_from_the_environment(
    config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANOMALY_DASHBOARD_USERS", f"eve={hash_password('eve-secret', 1000)}")
    client = TestClient(create_app(config, engine=store_engine(config)))
    login(client, "eve", "eve-secret")
    assert client.get("/queue").status_code == 200
    monkeypatch.setenv("ANOMALY_DASHBOARD_USERS", "eve")
    with pytest.raises(ValueError, match="name=hash entries"):
        create_app(config, engine=store_engine(config))


def test_cli_export_and_hash_password(config, tmp_path: Path) -> None:
    runner = CliRunner()
    store.add_review(store_engine(config), BATCH, "b1-r000008", "unsure", "ann")
    config_file = Path(config.home).parent / "config.yaml"
    out = tmp_path / "reviews.parquet"
    result = runner.invoke(cli, ["export", "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "b1-r000008" in set(pd.read_parquet(out)["record_id"])
    bad = runner.invoke(cli, ["export", "--config", str(config_file), "--out", "x.xlsx"])
    assert bad.exit_code == 2
    hashed = runner.invoke(cli, ["hash-password"], input="long-password\nlong-password\n")
    assert hashed.exit_code == 0, hashed.output
    encoded = hashed.output.strip().splitlines()[-1]
    assert verify_password("long-password", encoded)
    assert "long-password" not in hashed.output.replace("password:", "")
    token = runner.invoke(cli, ["hash-password", "--token"])
    assert "sha256:" in token.output


# ---------------------------------------------------------------------------- triage (issue 19)

THIRD = "batch-002.parquet"
BOT = {"Authorization": f"Bearer {TOKEN}"}


def search(client: TestClient, **params: object) -> dict:
    response = client.get("/api/search", params=params, headers=BOT)
    assert response.status_code == 200, response.text
    return response.json()


def test_search_api_filters(config, client: TestClient) -> None:
    prefix = search(client, q="b2-r00001")
    assert sorted(r["record_id"] for r in prefix["items"]) == [f"b2-r00001{i}" for i in range(10)]
    exact = search(client, q="b2-r000013", exact=True)["items"]
    assert [(r["batch_id"], r["record_id"]) for r in exact] == [(THIRD, "b2-r000013")]
    assert search(client, q="B2-R00001")["items"] == []  # ids are case-sensitive everywhere
    in_batch = search(client, batch_id=THIRD, limit=500)
    assert in_batch["total"] == 30
    assert {r["batch_id"] for r in in_batch["items"]} == {THIRD}
    scores = search(client, min_score=24, max_score=27, limit=500)["items"]
    assert scores
    assert all(24 <= r["score"] <= 27 for r in scores)
    big = search(client, f="amount>=100", batch_id=THIRD, limit=500)["items"]
    assert big
    assert all(r["values"]["amount"] >= 100 for r in big)
    ranged = search(client, f=["amount>=20", "amount<=60"], limit=500)["items"]
    assert ranged
    assert all(20 <= r["values"]["amount"] <= 60 for r in ranged)
    fuel = search(client, f="merchant_category=fuel", batch_id=THIRD, limit=500)["items"]
    all_fuel = [r for r in in_batch["items"] if r["values"]["merchant_category"] == "fuel"]
    assert len(fuel) == len(all_fuel) > 0
    assert search(client, f="merchant_category=fuel, amount>=1e9")["items"] == []
    body = {"records": [{"batch_id": THIRD, "record_id": "b2-r000020"}], "label": "unsure"}
    assert client.post("/api/reviews/bulk", json=body, headers=BOT).status_code == 200
    unsure = search(client, label="unsure", batch_id=THIRD)["items"]
    assert [r["record_id"] for r in unsure] == ["b2-r000020"]


def test_search_pages_both_ways_in_every_order(client: TestClient) -> None:
    for sort in ("score_desc", "score_asc", "time_desc", "time_asc", "batch"):
        pages, after = [], None
        while True:
            page = search(client, sort=sort, limit=7, **({"after": after} if after else {}))
            assert page["offset"] == 7 * len(pages)
            pages.append(page)
            after = page["next"]
            if after is None:
                break
        keys = [(r["batch_id"], r["record_id"]) for p in pages for r in p["items"]]
        assert len(keys) == len(set(keys)) == pages[0]["total"]
        back = search(client, sort=sort, limit=7, before=pages[2]["previous"])
        assert back["items"] == pages[1]["items"]
        assert back["offset"] == 7
    by_score = [r["score"] for r in search(client, sort="score_desc", limit=100)["items"]]
    assert by_score == sorted(by_score, reverse=True)
    by_batch = [r["batch_id"] for r in search(client, sort="batch", limit=100)["items"]]
    assert by_batch == sorted(by_batch)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"q": "' OR 1=1 --"}, 200),
        ({"q": "b2-r%"}, 200),
        ({"q": "b2-r_0000"}, 200),
        ({"batch_id": "x' OR '1'='1"}, 200),
        ({"f": "merchant_category=fuel' OR '1'='1"}, 200),
        ({"f": 'merchant_category="; DROP TABLE flagged; --'}, 200),
        ({"f": "amount') OR 1=1 --=3"}, 422),
        ({"f": 'amount"]>=1'}, 422),
        ({"f": "amount>=1; DROP TABLE flagged"}, 422),
        ({"f": "values>=1"}, 422),
        ({"f": "amount"}, 422),
        ({"min_score": "1 OR 1=1"}, 422),
        ({"max_score": "nan"}, 422),
        ({"sort": "log_likelihood; DROP TABLE flagged"}, 422),
        ({"label": "confirmed' OR 1=1"}, 422),
        ({"after": "not-a-cursor"}, 422),
        ({"before": "WyJ4IiwgMSwgMl0"}, 422),
        ({"since": "2024-01-01' OR 1=1"}, 422),
        ({"q": "x" * 301}, 422),
    ],
)
def test_injection_shaped_search_input_is_refused_or_empty(
    config, client: TestClient, params: dict, status: int
) -> None:
    before = store.search_count(store_engine(config), store.Search())
    response = client.get("/api/search", params=params, headers=BOT)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["items"] == []
    page = client.get("/queue", params=params, headers=BOT)
    assert page.status_code in (200, 303, 422)
    assert store.search_count(store_engine(config), store.Search()) == before


def test_bulk_labels_in_one_transaction_with_a_log_entry_each(config, client: TestClient) -> None:
    keys = [{"batch_id": THIRD, "record_id": f"b2-r00000{i}"} for i in range(5)]
    missing = {"records": [*keys, {"batch_id": THIRD, "record_id": "nope"}], "label": "unsure"}
    refused = client.post("/api/reviews/bulk", json=missing, headers=BOT)
    assert refused.status_code == 404
    assert all(review_log(config, k["record_id"], THIRD) == [] for k in keys)  # all or nothing
    body = {"records": keys, "label": "confirmed", "note": "one ring"}
    done = client.post("/api/reviews/bulk", json=body, headers=BOT)
    assert done.json() == {"records": 5}
    for k in keys:
        assert review_log(config, k["record_id"], THIRD) == [("confirmed", "bot", "one ring")]
    bad = client.post("/api/reviews/bulk", json={**body, "label": "fraud"}, headers=BOT)
    assert bad.status_code == 422
    login(client)
    form = {"key": [f"{THIRD}/b2-r000005", f"{THIRD}/b2-r000006"], "label": "false_positive",
            "csrf": csrf(client), "back": f"/queue?batch_id={THIRD}"}  # fmt: skip
    page = client.post("/queue/bulk", data=form)
    assert "Done: 2 labelled false positive" in page.text
    assert review_log(config, "b2-r000006", THIRD) == [("false_positive", "ann", "")]
    assert client.post("/queue/bulk", data={**form, "csrf": "x"}).status_code == 403


def test_assignment_queues(config, client: TestClient) -> None:
    keys = [{"batch_id": THIRD, "record_id": f"b2-r00002{i}"} for i in range(3)]
    assert client.post("/api/assignments", json={"records": keys, "assignee": "ann"},
                       headers=BOT).json() == {"records": 3}  # fmt: skip
    unknown = client.post("/api/assignments", json={"records": keys, "assignee": "zed"},
                          headers=BOT)  # fmt: skip
    assert unknown.status_code == 422
    assigned = search(client, assignee="ann", batch_id=THIRD)["items"]
    assert sorted(r["record_id"] for r in assigned) == [k["record_id"] for k in keys]
    open_ = search(client, assignee="unassigned", batch_id=THIRD, limit=500)["items"]
    assert len(open_) == 27
    assert search(client, assignee="me", batch_id=THIRD)["items"] == []  # bot has none
    login(client)
    mine = client.get(f"/queue?assignee=me&batch_id={THIRD}").text
    assert sorted(re.findall(r'data-href="/records/[^/]+/([^"?]+)', mine)) == [
        k["record_id"] for k in keys
    ]
    form = {"assignee": "unassigned", "csrf": csrf(client)}
    client.post(f"/records/{THIRD}/b2-r000020/assign", data=form)
    assert len(search(client, assignee="ann", batch_id=THIRD)["items"]) == 2
    # re-storing the batch keeps assignments (from the append-only assignment log)
    engine = store_engine(config)
    from store_data import ID, flagged_frame, quarantined_frame, summary

    store.write_batch(engine, summary(2, 30, alarm=True), "demo", flagged_frame(2, 30),
                      quarantined_frame(2), ID)  # fmt: skip
    assert len(search(client, assignee="ann", batch_id=THIRD)["items"]) == 2


def test_comment_thread(config, client: TestClient) -> None:
    record = f"/records/{THIRD}/b2-r000029"
    login(client)
    token = csrf(client)
    for body in ("first look: merchant is new", "called the card holder"):
        page = client.post(f"{record}/comments", data={"body": body, "csrf": token})
        assert page.status_code == 200
    assert client.post(f"{record}/comments", data={"body": "  ", "csrf": token}).status_code == 422
    assert client.post(f"{record}/comments", data={"body": "x"}).status_code == 403
    comment = {"batch_id": THIRD, "record_id": "b2-r000029", "body": "closed"}
    made = client.post("/api/comments", headers=BOT, json=comment)
    assert made.status_code == 201
    thread = client.get(
        "/api/comments", params={"batch_id": THIRD, "record_id": "b2-r000029"}, headers=BOT
    ).json()
    assert [(c["author"], c["body"]) for c in thread] == [
        ("ann", "first look: merchant is new"), ("ann", "called the card holder"), ("bot", "closed")
    ]  # fmt: skip
    page = client.get(record).text
    assert page.index("first look") < page.index("called the card holder") < page.index("closed")


def test_overview_page_and_api(client: TestClient) -> None:
    login(client)
    page = client.get("/overview?days=7").text
    assert page.count('class="chart day-chart"') == 4
    assert re.search(r'class="x-tick"[^>]*>\d{4}-\d{2}-\d{2}</text>', page)
    assert re.search(r'class="y-tick"[^>]*>0</text>', page)
    assert "<title>" in page
    assert 'class="band band-0"' in page
    days = client.get("/api/overview", headers=BOT).json()
    assert days
    assert sum(d["batches"] for d in days) >= 4
    assert any(d["alarms"] for d in days)
    assert all(d["versions"] for d in days)
    assert re.search(r">v1(\+v99)?</text>", page)  # the model version in force, as a band
    assert client.get("/overview?since=2024-13-01").status_code == 422


def test_display_fixes(config, client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    login(client)
    rows, _ = store.queue(store_engine(config), store.QueueFilter(batch_id="real.parquet"))
    page = client.get(f"/records/real.parquet/{rows[0].record_id}").text
    assert re.search(r'id="p-value">&lt; 1/\d+<', page)  # the floor 1/(n_cal + 1)
    stamp = rows[0].values["timestamp"]
    assert re.search(r"\.\d{9}", stamp)  # stored with nanoseconds …
    assert f'<td class="num">{stamp[:19]}+00:00</td>' in page  # … shown to the second
    queue = client.get("/queue?batch_id=real.parquet").text
    assert "&lt; 1/" in queue
    assert re.search(r'<td class="when">\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00</td>', queue)


def test_typical_values_follow_the_column_kind() -> None:
    from anomaly.dashboard import display

    profile = {
        "numeric": {"tx": {"q01": 0.0, "q50": 2.0, "q99": 9.0, "integer": True},
                    "old": {"q01": 0.0, "q05": 1.0, "q50": 2.0, "q95": 5.0, "q99": 9.0},
                    "amount": {"q01": 0.5, "q50": 40.2, "q99": 900.0, "integer": False}},
        "categorical": {"code": {"frequencies": {"7": 0.5, "9": 0.5}}},
    }  # fmt: skip
    assert display.typical("tx", -0.002561, profile) == 0
    assert display.typical("old", 2.7, profile) == 3  # an older profile: quantiles all whole
    assert display.typical("amount", 12.345, profile) == 12.345
    assert display.typical("code", 7, profile) == "7"
    assert display.when("2024-03-04T21:55:12.395656706+00:00", "Europe/Paris") == (
        "2024-03-04T22:55:12+01:00"
    )
    assert display.p_value_text(1 / 4001, 4000) == "< 1/4001"
    assert display.p_value_text(2 / 4001, 4000) == "0.0005"


def test_normal_index_finds_the_nearest_rows_and_round_trips(tmp_path: Path) -> None:
    import numpy as np

    from anomaly.neighbours import NormalIndex

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    raw = pd.DataFrame({"x": X[:, 0] * 10, "c": np.where(X[:, 1] > 0, "a", "b")})
    index = NormalIndex.build(X, raw, max_rows=200)
    assert index.points.shape == (200, 3)
    query = index.points[17] + 1e-3
    idx, dist = index.nearest(query, k=4)
    assert idx[0] == 17
    assert list(dist) == sorted(dist)
    brute = np.argsort(np.linalg.norm(index.points - query, axis=1))[:4]
    assert list(idx) == list(brute)
    index.save(tmp_path)
    loaded = NormalIndex.load(tmp_path)
    assert np.array_equal(loaded.points, index.points)
    assert loaded.rows(idx) == index.rows(idx)
    assert isinstance(loaded.rows(idx)[0]["c"], str)
    assert NormalIndex.load(tmp_path / "none") is None
    with pytest.raises(ValueError, match="same rows"):
        NormalIndex.build(X, raw.iloc[:10])
