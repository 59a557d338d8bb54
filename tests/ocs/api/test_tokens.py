"""Bearer tokens in the store: kept hashed, found by the token, gone when revoked."""

from __future__ import annotations

import pytest

from ocs.api.tokens import TokenError, lookup, new_token, op_create, op_revoke, tokens
from ocs.store import Store
from ocs.store.env import API_TOKENS


def test_a_token_is_kept_as_its_hash_with_its_role(store: Store) -> None:
    token = new_token()
    rec = store.run_write(op_create(token, "care", name="crm", actor="cli:ops", now=100))
    assert rec.token_id == token[:12] and rec.role == "care" and rec.created_at == 100
    with store.read() as txn:
        stored = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.dbs[API_TOKENS])]
    assert len(stored) == 1
    assert token.encode() not in stored[0][0] + stored[0][1]
    assert token[12:].encode() not in stored[0][1]
    assert lookup(store, token) == rec
    assert tokens(store) == [rec]


def test_unknown_malformed_and_revoked_tokens_are_not_found(store: Store) -> None:
    token = new_token()
    store.run_write(op_create(token, "admin"))
    other = new_token()
    for bad in (other, token[:-1], token + "A", "", token.upper() if token != token.upper()
                else "x", "ocs_" + "\x00" * 43):
        assert lookup(store, bad) is None
    assert store.run_write(op_revoke(token[:12])).role == "admin"
    assert lookup(store, token) is None
    with pytest.raises(TokenError):
        store.run_write(op_revoke(token[:12]))


def test_roles_and_names_are_checked(store: Store) -> None:
    with pytest.raises(TokenError, match="role"):
        op_create(new_token(), "root")
    with pytest.raises(TokenError, match="name"):
        op_create(new_token(), "noc", name="a\nb")
