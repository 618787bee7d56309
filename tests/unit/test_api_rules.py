"""The pure rules behind the API: status numbers (§10), what a cancel may
stop, what "the same content" is for idempotency, and token scopes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.config import ConfigError, parse_config
from carrierd.domain.cancel import Refused, RevokeFirst, after_revoke, decide_cancel
from carrierd.domain.lifecycle import Move
from carrierd.domain.states import FINAL_STATES, State
from carrierd.domain.status import status_number
from carrierd.intake import canonical_json, validate_batch

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
DB = {"database": {"dsn": "postgresql://localhost/x"}}


def test_every_state_has_a_status_number() -> None:
    numbers = {state: status_number(state) for state in State}
    assert numbers[State.DELIVERED] == 2
    assert {s for s, n in numbers.items() if n == 1} == {
        State.SENDING,
        State.SUBMITTED,
        State.RCS_SENT,
    }
    assert {s for s, n in numbers.items() if n == 3} == FINAL_STATES - {
        State.DELIVERED,
        State.UNKNOWN,
    }
    assert {s for s, n in numbers.items() if n == 0} == {
        State.SCHEDULED,
        State.QUEUED,
        State.DISPATCHING,
        State.UNKNOWN,
    }
    assert status_number("delivered") == 2


@pytest.mark.parametrize("state", list(State))
def test_a_cancel_stops_only_what_no_carrier_has(state: State) -> None:
    decision = decide_cancel(7, state)
    if state in (State.SCHEDULED, State.QUEUED):
        assert isinstance(decision, Move)
        assert (decision.src, decision.dst) == (state, State.CANCELLED)
    elif state is State.RCS_SENT:
        assert isinstance(decision, RevokeFirst)
    else:
        assert isinstance(decision, Refused)
        assert decision.state is state
        assert decision.retry == (state is State.DISPATCHING)


def test_after_a_revoke() -> None:
    for answer in ("revoked", "not_found"):
        for src in (State.RCS_SENT, State.QUEUED):
            move = after_revoke(7, src, answer, {"answer": answer})
            assert isinstance(move, Move) and (move.src, move.dst) == (src, State.CANCELLED)
    delivered = after_revoke(7, State.RCS_SENT, "already_delivered", {})
    assert isinstance(delivered, Refused) and not delivered.retry
    error = after_revoke(7, State.QUEUED, "error", {})
    assert isinstance(error, Refused) and error.retry and error.state is State.QUEUED


def test_a_queued_plus_message_is_revoked_first() -> None:
    # It may be a send retried after a lost answer: the platform may hold it.
    assert isinstance(decide_cancel(7, State.QUEUED, "rcs"), RevokeFirst)
    assert isinstance(decide_cancel(7, State.QUEUED, "rcs", can_revoke=False), Move)
    assert isinstance(decide_cancel(7, State.QUEUED, "sms"), Move)
    assert isinstance(decide_cancel(7, State.SCHEDULED, "rcs"), Move)


def _hash(item: dict[str, object]) -> bytes:
    config = parse_config({"accounts": {"a": {"tokens": ["t"]}}, **DB}, env={})
    batch = validate_batch(
        {"messages": [item]}, config.accounts["a"], NOW, max_items=10, expiry_s=3600
    )
    assert not batch.rejected, batch.rejected
    digest = batch.rows[0]["request_sha256"]
    assert isinstance(digest, bytes) and len(digest) == 32
    return digest


def test_same_content_is_what_intake_normalized() -> None:
    base = {"to": "090-1234-5678", "sms": {"text": "本文"}, "client_ref": "r"}
    same = _hash(base)
    assert _hash({**base, "to": "+819012345678"}) == same
    assert _hash({**base, "channel": "sms", "client_ref": "other"}) == same
    later = (NOW + timedelta(hours=1)).isoformat()
    later_jst = (
        (NOW + timedelta(hours=1)).astimezone(datetime.now().astimezone().tzinfo).isoformat()
    )
    assert _hash({**base, "send_at": later}) == _hash({**base, "send_at": later_jst})
    for changed in (
        {"to": "090-1234-5679"},
        {"sms": {"text": "本文!"}},
        {"send_at": later},
        {"carrier": "au"},
        {"callback_url": "https://example.com/cb"},
        {"callback_every_change": True},
    ):
        assert _hash({**base, **changed}) != same, changed
    rcs = {"to": "090-1234-5678", "channel": "rcs", "rcs": {"text": "a"}}
    assert _hash(rcs) != _hash({**rcs, "rcs": {"text": "b"}})


def _dumps(content: object) -> str:
    """The spelling the stored hashes were made with, before canonical_json."""
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), _json_values, max_size=12))
def test_the_canonical_spelling_is_json_dumps_byte_for_byte(content: dict[str, object]) -> None:
    # Every stored request_sha256 was made from json.dumps: a retry after an
    # upgrade must hash to the same digest, or it is refused as a conflict.
    assert canonical_json(content) == _dumps(content)


def test_a_full_row_hashes_as_before() -> None:
    item = {
        "to": "090-1234-5678",
        "channel": "rcs_then_sms",
        "rcs": {
            "text": '本文 "quoted"\n',
            "chips": [{"type": "reply", "text": "はい", "postback": "yes"}],
        },
        "sms": {"text": "本文"},
        "carriers": ["softbank", "docomo"],
        "callback_url": "https://example.com/cb",
        "callback_every_change": True,
        "send_at": (NOW + timedelta(hours=1)).isoformat(),
        "skip_opted_out": True,
        "reassigned_check": {"base_date": "2026-01-01"},
    }
    config = parse_config({"accounts": {"a": {"tokens": ["t"]}}, **DB}, env={})
    batch = validate_batch(
        {"messages": [item]},
        config.accounts["a"],
        NOW,
        max_items=10,
        expiry_s=3600,
        reassign_enabled=True,
    )
    assert not batch.rejected, batch.rejected
    row = batch.rows[0]
    content = {
        "channel": "rcs_then_sms",
        "msisdn": "+819012345678",
        "sms_text": "本文",
        "rcs_content": row["rcs_content"],
        "carrier_named": None,
        "carriers_allowed": row["carriers_allowed"],
        "callback_url": "https://example.com/cb",
        "callback_every_change": True,
        "send_at": round((NOW + timedelta(hours=1)).timestamp() * 1_000_000),
        "skip_opted_out": True,
        "reassign_base_date": "2026-01-01",
    }
    assert row["request_sha256"] == hashlib.sha256(_dumps(content).encode()).digest()


def test_scoped_tokens_in_config() -> None:
    config = parse_config(
        {
            "accounts": {
                "a": {
                    "api_tokens": [
                        {"token": "m", "role": "manager"},
                        {"sha256": "ab" * 32, "scopes": ["reports", "optouts"]},
                    ]
                }
            },
            **DB,
        },
        env={},
    )
    access = config.access_for_token("m")
    assert access is not None and access[1] == frozenset({"send", "read"})
    assert config.account_for_token("m") is config.accounts["a"]
    assert config.access_for_token("nope") is None
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "accounts": {
                    "a": {
                        "api_tokens": [
                            {"token": "m", "role": "boss"},
                            {"token": "n", "scopes": ["send", "delete"]},
                            {"sha256": "zz", "role": "manager"},
                            {"token": "o"},
                            {"token": "p", "role": "manager", "colour": "red"},
                        ]
                    }
                }
            },
            env={"CARRIERD_DSN": "postgresql://localhost/x"},
        )
    problems = "\n".join(err.value.problems)
    assert "accounts.a.api_tokens[0].role: must be one of" in problems
    assert "accounts.a.api_tokens[1].scopes: unknown scope 'delete'" in problems
    assert "accounts.a.api_tokens[2].sha256: not a SHA-256 hex digest" in problems
    assert "accounts.a.api_tokens[3].role: required (or scopes)" in problems
    assert "accounts.a.api_tokens[4].colour: unknown key" in problems
