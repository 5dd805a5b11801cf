"""The dashboard's app factory."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response, status
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from anomaly import store
from anomaly.config import Config
from anomaly.dashboard import api, display, pages, triage
from anomaly.dashboard.auth import CSRF_COOKIE, Accounts
from anomaly.dashboard.registry_view import Detectors
from anomaly.dashboard.security import LoginRequired

HERE = Path(__file__).parent
#: no inline scripts, nothing from other origins; the SVG charts are inline markup
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


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
    if engine is None:
        engine = store.connect(config.store.url or store.default_url(config.home))
    app.state.engine = engine
    app.state.accounts = accounts or Accounts.from_config(config.dashboard)
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
        """Give every visitor a CSRF token (double-submit cookie); set security headers."""
        token = request.cookies.get(CSRF_COOKIE)
        request.state.csrf = token or secrets.token_urlsafe(24)
        response = await call_next(request)
        if not token:
            response.set_cookie(
                CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict",
                secure=request.url.scheme == "https",
            )  # fmt: skip
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(
            "/login?" + urlencode({"next": exc.next_url}), status.HTTP_303_SEE_OTHER
        )

    return app


def _num(value: object, digits: int = 4) -> str:
    """Numbers to ``digits`` significant figures; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:.{digits}g}"
