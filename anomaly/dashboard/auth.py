"""Reviewers and their secrets: password and token hashes, server-side sessions, CSRF tokens.

Secrets are stored only as hashes (PBKDF2-HMAC-SHA256 for passwords, SHA-256 for random API
tokens, which are long enough not to need a slow hash) and compared in constant time, as bytes
(``hmac.compare_digest`` refuses non-ASCII ``str``). Nothing here logs a secret.

A session is a random id: the cookie carries it signed and timestamped (itsdangerous), the
review store keeps its SHA-256 with the user, the expiry and a fingerprint of the user's
password hash, so logout, ``anomaly sessions revoke`` and a new password end it at once. The
CSRF token of a page is an HMAC of the session id (before login: of a random cookie), so a
token works only with the session it was made for.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import Engine

from anomaly import store
from anomaly.config import Dashboard

#: PBKDF2-HMAC-SHA256 iterations (OWASP Password Storage Cheat Sheet, 2023: 600,000)
PBKDF2_ITERATIONS = 600_000
SESSION_COOKIE = "anomaly_session"
CSRF_COOKIE = "anomaly_csrf"

logger = logging.getLogger(__name__)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256:ITERATIONS:SALT:HEX`` for a password (no ``$``: configs expand ``$VAR``)."""
    if not password:
        msg = "the password is empty"
        raise ValueError(msg)
    salt = secrets.token_urlsafe(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256:{iterations}:{salt}:{digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password`."""
    _, iterations, salt, expected = encoded.split(":")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(digest.hex(), expected)


def new_token() -> str:
    """A random API token (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """``sha256:HEX`` for an API token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _from_env(name: str) -> dict[str, str]:
    """``name=hash,name=hash`` entries of an environment variable."""
    entries = {}
    for item in filter(None, (s.strip() for s in os.environ.get(name, "").split(","))):
        user, sep, value = item.partition("=")
        if not sep or not user:
            msg = f"${name} must hold name=hash entries separated by commas"
            raise ValueError(msg)
        entries[user.strip()] = value.strip()
    return entries


@dataclass(frozen=True)
class Accounts:
    """The reviewers who may write: password hashes, token hashes and the session key."""

    users: dict[str, str]
    tokens: dict[str, str]
    key: bytes
    session_seconds: float

    @classmethod
    def from_config(cls, settings: Dashboard) -> Accounts:
        """Users and tokens from the config plus its environment variables (validated alike)."""
        checked = Dashboard(
            users={**settings.users, **_from_env(settings.users_env)},
            tokens={**settings.tokens, **_from_env(settings.tokens_env)},
        )
        key = os.environ.get(settings.secret_key_env, "").encode()
        if not key:
            logger.warning(
                "$%s is not set: sessions are signed with a random key and end when the "
                "dashboard restarts (and do not work across several worker processes)",
                settings.secret_key_env,
            )
            key = secrets.token_bytes(32)
        return cls(checked.users, checked.tokens, key, settings.session_hours * 3600)

    def login(self, user: str, password: str) -> bool:
        """Whether the password is the user's (the same work is done for unknown users)."""
        encoded = self.users.get(user)
        if encoded is None:
            verify_password(password, _dummy_hash())
            return False
        return verify_password(password, encoded)

    def token_user(self, token: str) -> str | None:
        """The reviewer an API token belongs to, or None."""
        digest = hash_token(token)
        found = None
        for user, expected in self.tokens.items():
            if hmac.compare_digest(digest, expected):
                found = user
        return found

    def credential(self, user: str) -> str:
        """A fingerprint of the user's password hash: it changes when the password does."""
        return hashlib.sha256(self.users.get(user, "").encode()).hexdigest()


@functools.cache
def _dummy_hash() -> str:
    """Checked when a user is unknown, so the time taken does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def same_secret(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two non-empty strings, any characters (compared as bytes)."""
    if not a or not b:
        return False
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Logins kept in the review store, named by signed cookies."""

    def __init__(self, accounts: Accounts, engine: Engine) -> None:
        self.accounts = accounts
        self.engine = engine
        self._cookies = URLSafeTimedSerializer(accounts.key, salt="anomaly.session")

    def start(self, user: str) -> str:
        """Record a new login of ``user``; the cookie value naming it."""
        session_id = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=self.accounts.session_seconds)
        credential = self.accounts.credential(user)
        store.start_session(self.engine, _id_hash(session_id), user, credential, expires)
        return self._cookies.dumps(session_id)

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a cookie with a valid signature and age (not checked: whether the
        session still exists)."""
        if not cookie:
            return None
        try:
            session_id = self._cookies.loads(cookie, max_age=self.accounts.session_seconds)
        except BadData:
            return None
        return session_id if isinstance(session_id, str) else None

    def user(self, cookie: str | None) -> str | None:
        """The reviewer of a live session: signed, unexpired, not ended, the user still
        configured with the password they logged in with; else None."""
        session_id = self.session_id(cookie)
        if session_id is None:
            return None
        found = store.live_session(self.engine, _id_hash(session_id))
        if found is None or found.user not in self.accounts.users:
            return None
        if not same_secret(found.credential, self.accounts.credential(found.user)):
            return None
        return found.user

    def end(self, cookie: str | None) -> None:
        """End the session a cookie names (logout); nothing if it names none."""
        session_id = self.session_id(cookie)
        if session_id is not None:
            store.end_session(self.engine, _id_hash(session_id))

    def csrf_token(self, binding: str) -> str:
        """The CSRF token for a session id (or, before login, the random CSRF cookie)."""
        message = b"csrf\0" + binding.encode("utf-8", "surrogateescape")
        return hmac.new(self.accounts.key, message, hashlib.sha256).hexdigest()
