"""Reviewers and their secrets: password and token hashes, signed session cookies, CSRF tokens.

Secrets are stored only as hashes (PBKDF2-HMAC-SHA256 for passwords, SHA-256 for random API
tokens, which are long enough not to need a slow hash) and compared in constant time. Nothing
here logs a secret.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass

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

    def session_cookie(self, user: str) -> str:
        """A signed cookie value naming ``user``, valid for the session lifetime."""
        payload = json.dumps({"user": user, "exp": time.time() + self.session_seconds})
        body = base64.urlsafe_b64encode(payload.encode()).decode()
        return f"{body}.{self._sign(body)}"

    def session_user(self, cookie: str | None) -> str | None:
        """The reviewer of a valid, unexpired session cookie that still exists, or None."""
        if not cookie or "." not in cookie:
            return None
        body, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body))
        except ValueError:
            return None
        if payload.get("exp", 0) < time.time() or payload.get("user") not in self.users:
            return None
        return str(payload["user"])

    def _sign(self, body: str) -> str:
        return hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()


@functools.cache
def _dummy_hash() -> str:
    """Checked when a user is unknown, so the time taken does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def csrf_ok(cookie: str | None, sent: str | None) -> bool:
    """Double-submit check: the token sent with a form equals the visitor's CSRF cookie."""
    return bool(cookie) and bool(sent) and hmac.compare_digest(str(cookie), str(sent))
