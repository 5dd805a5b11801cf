"""Dashboard logins kept on the server (:class:`anomaly.store.tables.LoginSession`), so that one
can end before it expires.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Engine,
    delete,
    select,
)
from sqlalchemy.orm import Session

from anomaly.store.tables import (
    LoginSession,
)


def start_session(
    engine: Engine, id_hash: str, user: str, credential: str, expires_at: datetime
) -> None:
    """Record a new login (and forget logins that have expired)."""
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
        session.add(
            LoginSession(
                id_hash=id_hash,
                user=user,
                credential=credential,
                created_at=now,
                expires_at=expires_at,
            )
        )


def live_session(engine: Engine, id_hash: str) -> LoginSession | None:
    """The login with this id hash if it has not ended or expired, else None."""
    query = select(LoginSession).where(
        LoginSession.id_hash == id_hash, LoginSession.expires_at > datetime.now(UTC)
    )
    with Session(engine) as session:
        return session.scalars(query).first()


def end_session(engine: Engine, id_hash: str) -> bool:
    """End one login (logout); whether it existed."""
    with Session(engine) as session, session.begin():
        result = session.execute(delete(LoginSession).where(LoginSession.id_hash == id_hash))
    return bool(result.rowcount)


def end_sessions(engine: Engine, user: str | None = None) -> int:
    """End every login of ``user`` (None: of everyone); how many ended."""
    query = delete(LoginSession)
    if user is not None:
        query = query.where(LoginSession.user == user)
    with Session(engine) as session, session.begin():
        result = session.execute(query)
    return int(result.rowcount)


def live_sessions(engine: Engine) -> list[LoginSession]:
    """Every login that has not ended or expired, oldest first."""
    query = (
        select(LoginSession)
        .where(LoginSession.expires_at > datetime.now(UTC))
        .order_by(LoginSession.created_at)
    )
    with Session(engine) as session:
        return list(session.scalars(query))
