"""Request-level access rules: who is asking, may they read, may they write."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from anomaly.dashboard.auth import SESSION_COOKIE, Accounts, Sessions, same_secret


class LoginRequired(Exception):
    """A page needs a login: the app answers with a redirect to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def accounts(request: Request) -> Accounts:
    """The app's accounts."""
    return request.app.state.accounts


def sessions(request: Request) -> Sessions:
    """The app's logins."""
    return request.app.state.sessions


def session_user(request: Request) -> str | None:
    """The reviewer logged in through the session cookie, or None (looked up once a request)."""
    if not hasattr(request.state, "session_user"):
        request.state.session_user = sessions(request).user(request.cookies.get(SESSION_COOKIE))
    return request.state.session_user


def secure_cookies(request: Request) -> bool:
    """Whether cookies get the ``Secure`` flag: served over HTTPS, directly or (``hsts``)
    behind a proxy that ends TLS."""
    return request.url.scheme == "https" or request.app.state.config.dashboard.hsts


def csrf_token(request: Request) -> str:
    """This visitor's CSRF token: bound to the session id of a validly signed session cookie,
    else to the random ``anomaly_csrf`` cookie (set by the app's middleware)."""
    own = sessions(request)
    binding = own.session_id(request.cookies.get(SESSION_COOKIE)) or request.state.csrf_cookie
    return own.csrf_token(binding)


def csrf_ok(request: Request, sent: str | None) -> bool:
    """Whether ``sent`` (form field ``csrf`` or header ``X-CSRF-Token``) is this visitor's
    token; compared in constant time, as bytes (any characters are refused, never an error)."""
    return same_secret(csrf_token(request), sent)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def api_user(request: Request) -> str | None:
    """The reviewer of a request: a bearer token first (a wrong one is refused), then the
    session cookie."""
    token = _bearer(request)
    if token is not None:
        user = accounts(request).token_user(token)
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return user
    return session_user(request)


def api_reader(request: Request) -> str | None:
    """Dependency of every API read: open reads, or an authenticated reviewer."""
    user = api_user(request)
    if user is None and not request.app.state.config.dashboard.open_reads:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "log in or send a bearer token to read (reads are not open)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


def api_writer(request: Request) -> str:
    """Dependency of every API write: a bearer token, or a session plus the CSRF header
    ``X-CSRF-Token`` (the page's token, bound to the session)."""
    if _bearer(request) is not None:
        return str(api_user(request))
    user = session_user(request)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "writing needs a reviewer: send a bearer token or log in",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not csrf_ok(request, request.headers.get("x-csrf-token")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong X-CSRF-Token header")
    return user


def page_reader(request: Request) -> str | None:
    """Dependency of every page: open reads or a logged-in reviewer, else the login form."""
    user = session_user(request)
    if user is None and not request.app.state.config.dashboard.open_reads:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return user
