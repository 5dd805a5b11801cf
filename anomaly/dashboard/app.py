"""The dashboard's app factory."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response, status
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from anomaly import store
from anomaly.config import Config
from anomaly.dashboard import api, display, pages, triage
from anomaly.dashboard.auth import CSRF_COOKIE, Accounts, Sessions
from anomaly.dashboard.registry_view import Detectors
from anomaly.dashboard.security import LoginRequired, csrf_token, secure_cookies
from anomaly.dashboard.throttle import Throttle

HERE = Path(__file__).parent
#: no inline scripts, nothing from other origins; the SVG charts are inline markup
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
#: sent on every response, errors included
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: one year, once the dashboard is configured as served over TLS (``dashboard.hsts``)
HSTS = "max-age=31536000"
#: what a CSRF cookie this app made looks like; anything else is replaced
_CSRF_COOKIE_FORM = re.compile(r"[A-Za-z0-9_-]{32}")
#: password checks at once (PBKDF2 is CPU work): a login flood queues here, not in the
#: threadpool every other request needs, and leaves half the cores to the other requests
HASH_THREADS = max(1, (os.cpu_count() or 2) // 2)
logger = logging.getLogger(__name__)


def create_app(
    config: Config, engine: Engine | None = None, accounts: Accounts | None = None
) -> FastAPI:
    """The dashboard for ``config``'s review store (``engine``/``accounts`` default to the
    config's store and reviewers)."""
    app = FastAPI(
        title=f"anomaly review dashboard — {config.name}",
        summary="Flagged records, reviews, batches and the model registry.",
        docs_url=None,  # Swagger UI would load from a CDN; /docs is rendered on the server
        redoc_url=None,
    )
    app.state.config = config
    app.state.engine = store.store_engine(config) if engine is None else engine
    app.state.accounts = accounts or Accounts.from_config(config.dashboard)
    app.state.sessions = Sessions(app.state.accounts, app.state.engine)
    app.state.throttle = Throttle(
        config.dashboard.login_failures, config.dashboard.login_failures_per_address
    )
    app.state.hasher = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="password-check")
    app.state.detectors = Detectors(config)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["num"] = _num
    zone = config.schedule.timezone
    templates.env.filters["when"] = lambda value: display.when(value, zone)
    templates.env.filters["p_text"] = display.p_value_text
    templates.env.globals["time_zone"] = zone
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(triage.api_router)
    app.include_router(triage.router)
    app.include_router(pages.router)

    @app.middleware("http")
    async def csrf_cookie_and_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Give every visitor a CSRF cookie and the page its session-bound token; set the
        security headers on every response, a 500 included."""
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        fresh = not _CSRF_COOKIE_FORM.fullmatch(cookie)
        request.state.csrf_cookie = secrets.token_urlsafe(24) if fresh else cookie
        request.state.csrf = csrf_token(request)
        try:
            if _has_nul(request):  # no database stores it (PostgreSQL refuses it in text)
                response = PlainTextResponse("NUL characters are not allowed in a URL", 400)
            else:
                response = await call_next(request)
        except Exception:  # logged here so that even this answer carries the headers
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            response = PlainTextResponse("internal error (logged by the dashboard)", 500)
        if fresh:
            response.set_cookie(
                CSRF_COOKIE, request.state.csrf_cookie, httponly=True, samesite="strict",
                secure=secure_cookies(request),
            )  # fmt: skip
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if config.dashboard.hsts:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(
            "/login?" + urlencode({"next": exc.next_url}), status.HTTP_303_SEE_OTHER
        )

    return app


def _has_nul(request: Request) -> bool:
    """Whether the path or a query parameter holds a NUL character (sent as ``%00``)."""
    path = request.scope.get("path", "")
    return "\x00" in path or any("\x00" in k + v for k, v in request.query_params.multi_items())


def _num(value: object, digits: int = 4) -> str:
    """Numbers to ``digits`` significant figures; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:.{digits}g}"
