"""The client's pure parts: instants given on the command line, the
messages `send` builds, the columns it prints, the error shapes it reads."""

from __future__ import annotations

import argparse
import io
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carrierd.__main__ import build_parser
from carrierd.client import error_from_response
from carrierd.client_cli import (
    TOKEN_ROLES,
    UsageError,
    _token_new,
    jst,
    messages_to_send,
    new_token,
    parse_when,
    table,
)
from carrierd.config import ROLES, parse_config
from carrierd.domain.clock import JST

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=JST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T09:30:00+09:00", datetime(2026, 11, 22, 9, 30, tzinfo=JST)),
        ("2026-11-22T00:30:00Z", datetime(2026, 11, 22, 0, 30, tzinfo=UTC)),
        ("2026-11-22T09:30", datetime(2026, 11, 22, 9, 30, tzinfo=JST)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=JST)),
        ("90m", NOW - timedelta(minutes=90)),
        ("6h", NOW - timedelta(hours=6)),
        ("2d", NOW - timedelta(days=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    at = parse_when(text, NOW)
    assert at == expected and at.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "6 weeks", "2026-13-01", ""])
def test_parse_when_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(UsageError, match="expected an ISO 8601 date-time"):
        parse_when(text, NOW)


def test_instants_are_shown_in_jst() -> None:
    assert jst("2026-11-22T03:00:00.123456+00:00") == "2026-11-22T12:00:00+09:00"
    assert jst(None) == "-"


def test_table_aligns_columns() -> None:
    lines = table(("ID", "STATE", "TO"), [("1", "queued", "+81901"), ("1234", None, "x")])
    assert lines == [
        "ID    STATE   TO",
        "1     queued  +81901",
        "1234  -       x",
    ]


def send_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["send", *argv])


def test_send_builds_one_item_per_number() -> None:
    args = send_args(
        "--to",
        "09012345678",
        "--to",
        "08011112222",
        "--text",
        "hello",
        "--channel",
        "rcs_then_sms",
        "--client-ref",
        "order",
        "--send-at",
        "2026-11-23T09:00",
        "--carrier",
        "au",
    )
    items = messages_to_send(args, NOW)
    assert items == [
        {
            "channel": "rcs_then_sms",
            "sms": {"text": "hello"},
            "rcs": {"text": "hello"},
            "send_at": "2026-11-23T09:00:00+09:00",
            "carrier": "au",
            "to": to,
            "client_ref": ref,
        }
        for to, ref in (("09012345678", "order-1"), ("08011112222", "order-2"))
    ]
    rcs_only = messages_to_send(send_args("--to", "1", "--text", "t", "--channel", "rcs"), NOW)
    assert rcs_only == [{"channel": "rcs", "rcs": {"text": "t"}, "to": "1"}]


def test_send_reads_a_batch_as_json_or_json_lines(tmp_path: Path) -> None:
    as_json = tmp_path / "batch.json"
    as_json.write_text('{"messages": [{"to": "1", "sms": {"text": "a"}}]}')
    as_lines = tmp_path / "batch.jsonl"
    as_lines.write_text('{"to": "1", "sms": {"text": "a"}}\n\n{"to": "2", "sms": {"text": "b"}}\n')
    assert messages_to_send(send_args("--batch", str(as_json)), NOW) == [
        {"to": "1", "sms": {"text": "a"}}
    ]
    assert [m["to"] for m in messages_to_send(send_args("--batch", str(as_lines)), NOW)] == [
        "1",
        "2",
    ]
    as_lines.write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected"):
        messages_to_send(send_args("--batch", str(as_lines)), NOW)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ((), "give --to"),
        (("--to", "1"), "give --text"),
        (("--batch", "x.json", "--to", "1"), "no --to or --text"),
        (("--to", "1", "--text", "t", "--callback-every-change"), "needs --callback-url"),
    ],
)
def test_send_says_what_is_missing(argv: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        messages_to_send(send_args(*argv), NOW)


def test_errors_are_read_in_every_shape() -> None:
    unified = error_from_response(
        400, '{"error": {"code": "invalid_field", "message": "bad", "field": "state"}}'
    )
    assert (unified.code, unified.message, unified.field) == ("invalid_field", "bad", "state")
    assert str(unified) == "400 invalid_field: bad (field state)"
    older = error_from_response(400, '{"error": "expected YYYY-MM", "field": "month"}')
    assert (older.code, older.message, older.field) == (
        "invalid_field",
        "expected YYYY-MM",
        "month",
    )
    outage = error_from_response(
        503, '{"error": "database unavailable", "detail": "connection refused"}'
    )
    assert str(outage) == "503 unavailable: database unavailable: connection refused"
    plain = error_from_response(405, "405: Method Not Allowed")
    assert str(plain) == "405 method_not_allowed: 405: Method Not Allowed"


def test_token_new_with_a_role_prints_a_table_the_daemon_reads_with_that_role() -> None:
    out = io.StringIO()
    args = build_parser().parse_args(
        ["token", "new", "--account", "acme", "--role", "manager", "--name", "campaign tool"]
    )
    assert _token_new(args, out) == 0
    printed = out.getvalue()
    token = re.search(r"^token\s+(\S+)$", printed, re.MULTILINE)
    assert token is not None
    table_text = printed[printed.index("[[accounts.acme.api_tokens]]") :]
    raw = {
        "database": {"dsn": "postgresql://localhost/carrierd"},
        "accounts": {"acme": {"senders": {}}},
        **tomllib.loads(table_text),
    }
    raw["accounts"]["acme"]["senders"] = {}
    config = parse_config(raw, env={})
    access = config.access_for_token(token.group(1))
    assert access is not None and access[1] == ROLES["manager"]
    assert config.accounts["acme"].api_tokens  # the table's name was accepted
    assert tuple(ROLES) == TOKEN_ROLES


def test_new_tokens_never_read_as_an_option() -> None:
    """token_urlsafe starts one token in 64 with "-": `--token -x...` then
    failed as a missing argument."""
    assert all(not new_token()[0].startswith("-") for _ in range(500))
