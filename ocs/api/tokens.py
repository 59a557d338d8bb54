"""REST API bearer tokens: made by ``ocs api token create``, shown once, kept hashed.

A token is 256 random bits; the store keeps its SHA-256 (a digest of that much entropy
cannot be searched back, so no slow hash is needed) with the role it grants. Every request
looks the digest up, so a revoked token stops working at once, on every worker.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable

from ocs.store.env import API_TOKENS, Store
from ocs.store.records import ApiToken, dec_api_token, encode
from ocs.store.tx import Tx

ROLES = ("admin", "care", "noc", "readonly")
"""admin: everything; care: subscribers, top-ups, usage, fraud cases; noc: alarms;
readonly: every GET. (The routes name the roles they admit: :mod:`ocs.api.app`.)"""

PREFIX = "ocs_"
ID_CHARS = 12
"""A token's id is its first characters (prefix + 8 random ones), enough to tell tokens
apart in a list, far too few to guess the rest."""
_TOKEN_RE = re.compile(r"^ocs_[A-Za-z0-9_-]{43}$")


class TokenError(ValueError):
    """A token that cannot be made or revoked (bad role or name, unknown id)."""


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def op_create(token: str, role: str, *, name: str = "", actor: str = "",
              now: int | None = None) -> Callable[[Tx], ApiToken]:
    """Keep ``token`` (from :func:`new_token`) with ``role``."""
    if role not in ROLES:
        raise TokenError(f"role: one of {', '.join(ROLES)}")
    if len(name) > 100 or any(c in name for c in "\x00\r\n"):
        raise TokenError("name: at most 100 characters, one line")
    rec = ApiToken(token_id=token[:ID_CHARS], role=role, name=name,
                   created_at=int(time.time()) if now is None else now, created_by=actor)

    def op(tx: Tx) -> ApiToken:
        if any(t.token_id == rec.token_id for t in _all(tx)):
            raise TokenError("token id already in use; create another")  # 2^-48: never
        tx.put(API_TOKENS, digest(token), encode(rec))
        return rec

    return op


def _all(tx: Tx) -> list[ApiToken]:
    return [dec_api_token.decode(v) for _k, v in tx.scan(API_TOKENS)]


def tokens(store: Store) -> list[ApiToken]:
    """Every token's record (never the token), oldest first."""
    with store.read() as txn:
        found = _all(Tx(txn, store.dbs))
    return sorted(found, key=lambda t: (t.created_at, t.token_id))


def op_revoke(token_id: str) -> Callable[[Tx], ApiToken]:
    """Forget the token whose id is ``token_id``: the next request with it is refused."""

    def op(tx: Tx) -> ApiToken:
        for k, v in tx.scan(API_TOKENS):
            rec = dec_api_token.decode(v)
            if rec.token_id == token_id:
                tx.delete(API_TOKENS, bytes(k))
                return rec
        raise TokenError(f"no token {token_id!r}")

    return op


def lookup(store: Store, token: str) -> ApiToken | None:
    """The record of a presented token, or None (unknown, revoked, malformed)."""
    if not _TOKEN_RE.match(token):
        return None
    raw = store.get(API_TOKENS, digest(token))
    return dec_api_token.decode(raw) if raw is not None else None
