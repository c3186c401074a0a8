"""Dashboard users, API tokens, roles and CSRF tokens.

Two roles: ``reader`` reads everything, ``admin`` may also pause and resume
services and mark stuck runs failed. Passwords are hashed with argon2id;
API tokens are 32 random bytes shown once and stored as their SHA-256,
which is enough for a secret that cannot be guessed and keeps the check
on every API request fast.

While no user exists, a server on a loopback address is open to anyone who
can reach it, as reader and admin: a single-machine tool. Once a user
exists, pages need a login and the API a session or a bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from cronledger.errors import InvalidValueError
from cronledger.store.tables import cron_api_tokens, cron_users
from cronledger.validation import validate_service_name

log = logging.getLogger(__name__)

READER = "reader"
ADMIN = "admin"
ROLES = (READER, ADMIN)

# Prefix of every API token, so a leaked one is easy to recognise in a scan.
TOKEN_PREFIX = "clt_"
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user, a token, or anyone while the server is open."""

    name: str
    role: str
    via: str  # "open", "session" or "token"

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


OPEN_PRINCIPAL = Principal(name="local", role=ADMIN, via="open")


@dataclass(frozen=True)
class UserRow:
    """A stored user, without the password hash."""

    name: str
    role: str
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class TokenRow:
    """A stored API token, without the token."""

    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None


class DuplicateNameError(InvalidValueError):
    """A user or token with that name exists already."""


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidValueError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidValueError(
            f"the password is too short ({len(password)} characters): "
            f"use at least {MIN_PASSWORD_LENGTH}"
        )
    return password


def users_exist(engine: Engine) -> bool:
    """Return True once any user is stored, which makes logins required."""
    with engine.connect() as connection:
        return connection.execute(select(cron_users.c.id).limit(1)).first() is not None


def add_user(engine: Engine, name: str, role: str, password: str, now: datetime) -> None:
    """Store a new user; raises DuplicateNameError if the name is taken."""
    validate_service_name(name)  # the same rule: letters, digits, . _ - and at most 100
    validate_role(role)
    validate_password(password)
    values = {
        "name": name,
        "role": role,
        "password_hash": _hasher.hash(password),
        "created_at": now,
    }
    try:
        with engine.begin() as connection:
            connection.execute(cron_users.insert().values(**values))
    except IntegrityError:
        raise DuplicateNameError(
            f"user {name!r} exists already: pick another name, or delete it first"
        ) from None
    log.info("user %s added with role %s", name, role)


def set_password(engine: Engine, name: str, password: str) -> bool:
    """Replace a user's password; return False if no such user exists."""
    validate_password(password)
    with engine.begin() as connection:
        count = connection.execute(
            cron_users.update()
            .where(cron_users.c.name == name)
            .values(password_hash=_hasher.hash(password))
        ).rowcount
    return bool(count)


def delete_user(engine: Engine, name: str) -> bool:
    with engine.begin() as connection:
        count = connection.execute(cron_users.delete().where(cron_users.c.name == name)).rowcount
    return bool(count)


def list_users(engine: Engine) -> list[UserRow]:
    users = cron_users.c
    query = select(users.name, users.role, users.created_at, users.last_login_at).order_by(
        users.name
    )
    with engine.connect() as connection:
        return [UserRow(*row) for row in connection.execute(query)]


def authenticate(engine: Engine, name: str, password: str, now: datetime) -> Principal | None:
    """Return the user if ``password`` is right, else None (also for an unknown name)."""
    users = cron_users.c
    with engine.connect() as connection:
        row = connection.execute(
            select(users.role, users.password_hash).where(users.name == name)
        ).first()
    if row is None:
        # Hash anyway, so a wrong name takes as long as a wrong password.
        _hasher.hash(password)
        return None
    try:
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    with engine.begin() as connection:
        values: dict[str, object] = {"last_login_at": now}
        if _hasher.check_needs_rehash(row.password_hash):
            values["password_hash"] = _hasher.hash(password)
        connection.execute(cron_users.update().where(users.name == name).values(**values))
    return Principal(name=name, role=row.role, via="session")


def session_user(engine: Engine, name: str) -> Principal | None:
    """Return the logged-in user named in a session, or None once deleted."""
    users = cron_users.c
    with engine.connect() as connection:
        role = connection.execute(select(users.role).where(users.name == name)).scalar()
    return Principal(name=name, role=role, via="session") if role is not None else None


def create_token(engine: Engine, name: str, role: str, now: datetime) -> str:
    """Store a new API token and return it; only its hash is kept."""
    validate_service_name(name)
    validate_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    values = {"name": name, "role": role, "token_hash": hash_token(token), "created_at": now}
    try:
        with engine.begin() as connection:
            connection.execute(cron_api_tokens.insert().values(**values))
    except IntegrityError:
        raise DuplicateNameError(
            f"token {name!r} exists already: pick another name, or revoke it first"
        ) from None
    log.info("API token %s created with role %s", name, role)
    return token


def revoke_token(engine: Engine, name: str) -> bool:
    with engine.begin() as connection:
        count = connection.execute(
            cron_api_tokens.delete().where(cron_api_tokens.c.name == name)
        ).rowcount
    return bool(count)


def list_tokens(engine: Engine) -> list[TokenRow]:
    tokens = cron_api_tokens.c
    query = select(tokens.name, tokens.role, tokens.created_at, tokens.last_used_at).order_by(
        tokens.name
    )
    with engine.connect() as connection:
        return [TokenRow(*row) for row in connection.execute(query)]


def token_principal(engine: Engine, token: str, now: datetime) -> Principal | None:
    """Return the principal of a bearer token, or None for an unknown one."""
    tokens = cron_api_tokens.c
    digest = hash_token(token)
    with engine.connect() as connection:
        row = connection.execute(
            select(tokens.name, tokens.role, tokens.last_used_at).where(tokens.token_hash == digest)
        ).first()
    if row is None:
        return None
    # Written at most once a minute per token, so a busy client does not
    # turn every read into a write.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        with engine.begin() as connection:
            connection.execute(
                cron_api_tokens.update().where(tokens.name == row.name).values(last_used_at=now)
            )
    return Principal(name=row.name, role=row.role, via="token")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
