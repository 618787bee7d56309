"""The client commands of `carrierd`: send, status, cancel, messages,
billing (through the HTTP API, `carrierd.client`) and token new.

The API's URL and token come from --url/--token or CARRIERD_URL and
CARRIERD_TOKEN (the environment keeps the token out of `ps`). Output is for
people by default (aligned columns, instants in JST as ISO 8601), the API's
JSON with --json. Exit status: 0 done, 1 the API refused or could not be
reached (or an item of a batch was rejected), 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from carrierd.client import (
    DEFAULT_URL,
    TOKEN_VARIABLE,
    URL_VARIABLE,
    ApiError,
    CarrierdClient,
    ClientError,
    SearchFilters,
    SendResult,
)
from carrierd.domain.clock import JST

CHANNELS = ("sms", "rcs", "rcs_then_sms")
CARRIERS = ("docomo", "au", "softbank", "rakuten")

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_RELATIVE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class UsageError(ValueError):
    """A command line the client cannot turn into a request."""


# -- instants ------------------------------------------------------------------


def parse_when(text: str, now: datetime) -> datetime:
    """A --since/--until/--send-at value: ISO 8601 (with an offset, or read
    as JST without one), a date (its JST midnight), or a time ago ("90m",
    "6h", "2d")."""
    relative = _RELATIVE.match(text.strip())
    if relative is not None:
        amount, unit = float(relative.group(1)), relative.group(2)
        return now - timedelta(seconds=amount * _RELATIVE_UNITS[unit])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r}: expected an ISO 8601 date-time (2026-11-22T09:00+09:00), "
            "a date (2026-11-22, JST) or a time ago (30m, 6h, 2d)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=JST)


def jst(value: str | None) -> str:
    """An instant from the API as JST ISO 8601 ("-" for none)."""
    if not value:
        return "-"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    if at.tzinfo is None:
        return value
    return at.astimezone(JST).isoformat(timespec="seconds")


# -- rendering -----------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Aligned columns, the last one left unpadded."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))

    def line(values: Sequence[str]) -> str:
        padded = [v.ljust(widths[i]) for i, v in enumerate(values[:-1])]
        return "  ".join([*padded, values[-1]]).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def fields(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    width = max(len(name) for name, _ in pairs)
    return [f"{name.ljust(width)}  {_cell(value)}".rstrip() for name, value in pairs]


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _reason(message: Mapping[str, Any]) -> str:
    reason = message.get("reason")
    if not isinstance(reason, dict):
        return "-"
    return " ".join(str(v) for v in (reason.get("code"), reason.get("text")) if v) or "-"


def render_status(message: Mapping[str, Any]) -> list[str]:
    timestamps = message.get("timestamps") or {}
    billing = message.get("billing") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", message.get("id")),
        ("state", message.get("state")),
        ("reason", _reason(message)),
        ("channel", f"{message.get('channel')} (leg {message.get('leg') or '-'})"),
        ("to", message.get("to")),
        ("carrier", message.get("carrier")),
        ("client_ref", message.get("client_ref")),
        ("parts", message.get("parts")),
        ("attempt", message.get("attempt")),
        (
            "billing",
            f"sms {billing.get('sms_units', 0)}, rcs {billing.get('rcs_units', 0)}",
        ),
    ]
    pairs += [(name, jst(value)) for name, value in timestamps.items() if value]
    lines = fields(pairs)
    history = message.get("history") or []
    if history:
        lines += ["", "history"]
        lines += [
            "  " + line
            for line in table(
                ("AT (JST)", "EVENT", "STATE", "CARRIER", "DETAIL"),
                [
                    (
                        jst(e.get("at")),
                        e.get("event"),
                        e.get("state"),
                        e.get("carrier"),
                        e.get("detail"),
                    )
                    for e in history
                ],
            )
        ]
    parts = message.get("sms_parts") or []
    if parts:
        lines += ["", "sms parts"]
        lines += [
            "  " + line
            for line in table(
                ("ATTEMPT", "PART", "CARRIER", "SMSC ID", "STATE", "RECEIPT", "SENT (JST)"),
                [
                    (
                        p.get("attempt"),
                        f"{p.get('part')}/{p.get('of')}",
                        p.get("carrier"),
                        p.get("smsc_message_id"),
                        p.get("state"),
                        (p.get("receipt") or {}).get("stat"),
                        jst(p.get("sent_at")),
                    )
                    for p in parts
                ],
            )
        ]
    return lines


def render_messages(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return table(
        ("ID", "STATE", "CHANNEL", "TO", "CARRIER", "CLIENT_REF", "ACCEPTED (JST)"),
        [
            (
                m.get("id"),
                m.get("state"),
                m.get("channel"),
                m.get("to"),
                m.get("carrier"),
                m.get("client_ref"),
                jst((m.get("timestamps") or {}).get("accepted_at")),
            )
            for m in messages
        ],
    )


def render_send(result: SendResult) -> list[str]:
    lines = [f"accepted {len(result.accepted)}, rejected {len(result.rejected)}"]
    if result.accepted:
        lines += table(
            ("INDEX", "ID", "PARTS"),
            [(a.get("index"), a.get("id"), a.get("parts")) for a in result.accepted],
        )
    if result.rejected:
        lines += ["rejected:"]
        lines += table(
            ("INDEX", "FIELD", "REASON"),
            [(r.get("index"), r.get("field"), r.get("reason")) for r in result.rejected],
        )
    return lines


def render_billing(billing: Mapping[str, Any]) -> list[str]:
    return fields([(name, value) for name, value in billing.items()])


# -- commands ------------------------------------------------------------------


def _emit(out: TextIO, args: argparse.Namespace, document: Any, lines: list[str]) -> None:
    if args.json:
        out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        out.write("\n".join(lines) + "\n")


def _read_text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _batch_from(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except ValueError:
        # JSON lines: one message per line.
        try:
            document = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise UsageError(f"--batch {path}: neither JSON nor JSON lines: {exc}") from None
    if isinstance(document, dict) and "messages" in document:
        document = document["messages"]
    if not isinstance(document, list) or not all(isinstance(m, dict) for m in document):
        raise UsageError(f'--batch {path}: expected {{"messages": [...]}} or a list of objects')
    return document


def messages_to_send(args: argparse.Namespace, now: datetime) -> list[dict[str, Any]]:
    """The items of POST /v1/messages the send command's options describe."""
    if args.batch is not None:
        if args.to or args.text is not None:
            raise UsageError("--batch takes the messages from the file: no --to or --text")
        return _batch_from(args.batch)
    if not args.to:
        raise UsageError("give --to NUMBER (repeat it for several) or --batch FILE")
    if args.text is None:
        raise UsageError("give --text TEXT (- reads it from standard input)")
    text = _read_text(args.text)
    item: dict[str, Any] = {"channel": args.channel}
    if args.channel in ("sms", "rcs_then_sms"):
        item["sms"] = {"text": text}
    if args.channel in ("rcs", "rcs_then_sms"):
        item["rcs"] = {"text": _read_text(args.rcs_text) if args.rcs_text else text}
    if args.send_at:
        item["send_at"] = parse_when(args.send_at, now).isoformat()
    if args.carrier:
        item["carrier"] = args.carrier
    if args.callback_every_change and not args.callback_url:
        raise UsageError("--callback-every-change needs --callback-url")
    if args.callback_url:
        item["callback_url"] = args.callback_url
        item["callback_every_change"] = args.callback_every_change
    items = []
    for index, to in enumerate(args.to):
        message = {**item, "to": to}
        if args.client_ref:
            # One reference per message: the idempotency key is per item.
            ref = args.client_ref if len(args.to) == 1 else f"{args.client_ref}-{index + 1}"
            message["client_ref"] = ref
        items.append(message)
    return items


async def _send(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    result = await api.send(messages_to_send(args, datetime.now(JST)))
    document = {"accepted": result.accepted, "rejected": result.rejected}
    if result.error is not None:
        document = {**result.error.body, **document}
    _emit(out, args, document, render_send(result))
    return 0 if not result.rejected else 1


async def _status(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    message = await api.status(args.id)
    _emit(out, args, message, render_status(message))
    return 0


async def _cancel(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    message = await api.cancel(args.id)
    _emit(out, args, message, [f"message {message.get('id')}: {message.get('state')}"])
    return 0


def search_filters(args: argparse.Namespace, now: datetime) -> SearchFilters:
    return SearchFilters(
        states=tuple(s for value in args.state for s in value.split(",") if s),
        to=args.to,
        since=parse_when(args.since, now).isoformat() if args.since else None,
        until=parse_when(args.until, now).isoformat() if args.until else None,
        client_ref=args.client_ref,
        channel=args.channel,
        carrier=args.carrier,
    )


async def _messages(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    filters = search_filters(args, datetime.now(JST))
    if args.all:
        found = [m async for m in api.search_all(filters, limit=args.limit)]
        next_cursor = None
    else:
        page = await api.search(filters, cursor=args.cursor, limit=args.limit)
        found, next_cursor = page.messages, page.next_cursor
    lines = render_messages(found) if found else ["no messages"]
    if next_cursor is not None:
        lines.append(f"more: --cursor {next_cursor} (or --all)")
    _emit(out, args, {"messages": found, "next_cursor": next_cursor}, lines)
    return 0


async def _billing(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    billing = await api.billing(args.month)
    _emit(out, args, billing, render_billing(billing))
    return 0


def render_optouts(optouts: Sequence[Mapping[str, Any]]) -> list[str]:
    return table(
        ("NUMBER", "ADDED (JST)", "SOURCE"),
        [(o.get("msisdn"), jst(o.get("added_at")), o.get("source")) for o in optouts],
    )


def _added_lines(answer: Mapping[str, Any]) -> list[str]:
    return [f"added {answer.get('added')}, already listed {answer.get('already_listed')}"]


def _read_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _write_file(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


async def _optouts_add(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = await api.optouts_add(args.numbers)
    _emit(out, args, answer, _added_lines(answer))
    return 0


async def _optouts_show(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    entry = await api.optout(args.number)
    _emit(out, args, entry, render_optouts([entry]))
    return 0


async def _optouts_remove(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    answer = await api.optouts_remove(args.number)
    _emit(out, args, answer, [f"{answer.get('msisdn')} removed"])
    return 0


async def _optouts_list(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    found, next_cursor = await api.optouts_page(cursor=args.cursor, limit=args.limit)
    while args.all and next_cursor is not None:
        more, next_cursor = await api.optouts_page(cursor=next_cursor, limit=args.limit)
        found += more
    lines = render_optouts(found) if found else ["the list is empty"]
    if next_cursor is not None:
        lines.append(f"more: --cursor {next_cursor} (or --all)")
    _emit(out, args, {"optouts": found, "next_cursor": next_cursor}, lines)
    return 0


async def _optouts_export(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    text = await api.optouts_export()
    if args.output and args.output != "-":
        _write_file(args.output, text)
    else:
        out.write(text)
    return 0


async def _optouts_import(api: CarrierdClient, args: argparse.Namespace, out: TextIO) -> int:
    text = sys.stdin.read() if args.file == "-" else _read_file(args.file)
    try:
        answer = await api.optouts_import(text)
    except ApiError as exc:
        # Every wrong row, not only the first the message names.
        for row in exc.body.get("rejected") or []:
            sys.stderr.write(f"  row {row.get('row')}: {row.get('reason')}\n")
        raise
    _emit(out, args, answer, _added_lines(answer))
    return 0


ApiCommand = Callable[[CarrierdClient, argparse.Namespace, TextIO], Coroutine[Any, Any, int]]


def run_api_command(
    command: ApiCommand,
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    url = args.url or env.get(URL_VARIABLE) or DEFAULT_URL
    token = args.token or env.get(TOKEN_VARIABLE)
    if not token:
        err.write(f"carrierd: no API token: pass --token or set {TOKEN_VARIABLE}\n")
        return 2

    async def main() -> int:
        async with CarrierdClient(url, token, timeout_s=args.timeout_s) as api:
            return await command(api, args, out)

    try:
        return asyncio.run(main())
    except UsageError as exc:
        err.write(f"carrierd {args.command}: {exc}\n")
        return 2
    except ApiError as exc:
        err.write(f"carrierd {args.command}: {exc}\n")
        state = exc.body.get("state")
        if isinstance(state, str):
            err.write(f"  the message is {state}\n")
        if args.json:
            out.write(json.dumps(dict(exc.body), ensure_ascii=False, indent=2) + "\n")
        return 1
    except ClientError as exc:
        err.write(f"carrierd {args.command}: {exc}\n")
        return 1


def new_token() -> tuple[str, str]:
    """A new API token and the SHA-256 hex digest the configuration holds."""
    # A prefix: a token never starts with "-" (a command line would read it
    # as an option), and secret scanners can recognise it.
    token = "cd_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode("utf-8")).hexdigest()


# The roles a token may carry (config.ROLES; the client does not read the
# configuration, a test keeps the two lists equal).
TOKEN_ROLES = ("company_admin", "senior_manager", "manager", "general_user")


def _token_new(args: argparse.Namespace, out: TextIO) -> int:
    token, digest = new_token()
    account = args.account or "<account>"
    if args.json:
        minted = {"token": token, "token_sha256": digest}
        out.write(json.dumps({**minted, "role": args.role} if args.role else minted) + "\n")
        return 0
    if args.role:
        name = args.name or args.role
        out.write(
            "\n".join(
                [
                    f"token         {token}",
                    f"token_sha256  {digest}",
                    "",
                    "Give the token to the client (it is not stored anywhere), add this",
                    "table to the configuration, and reload the daemon (SIGHUP,",
                    "`systemctl reload carrierd`); delete the table to revoke the token:",
                    f"[[accounts.{account}.api_tokens]]",
                    f"name = {json.dumps(name, ensure_ascii=False)}",
                    f'sha256 = "{digest}"',
                    f'role = "{args.role}"',
                ]
            )
            + "\n"
        )
        return 0
    out.write(
        "\n".join(
            [
                f"token         {token}",
                f"token_sha256  {digest}",
                "",
                "Give the token to the client (it is not stored anywhere) and add the",
                f"digest to [accounts.{account}] token_sha256 in the configuration, e.g.",
                f'  token_sha256 = ["{digest}"]',
                "then reload the daemon (SIGHUP, `systemctl reload carrierd`).",
            ]
        )
        + "\n"
    )
    return 0


# -- the parser ----------------------------------------------------------------


def add_client_commands(sub: Any) -> None:
    """The client commands, on the `carrierd` parser's subparsers."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--url", help=f"the daemon's HTTP API (default: ${URL_VARIABLE}, else {DEFAULT_URL})"
    )
    api.add_argument(
        "--token",
        help=f"API token (default: ${TOKEN_VARIABLE}; the environment keeps it out of ps)",
    )
    api.add_argument("--json", action="store_true", help="print the API's JSON")
    api.add_argument("--timeout-s", type=float, default=30.0, help="give up after (default 30)")

    def command(name: str, handler: ApiCommand, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=[api], help=help_text)
        parser.set_defaults(func=lambda args: run_api_command(handler, args))
        return parser

    send = command("send", _send, "send messages")
    send.add_argument("--to", action="append", default=[], help="mobile number (repeatable)")
    send.add_argument("--text", help="the text (- reads standard input)")
    send.add_argument("--channel", choices=CHANNELS, default="sms")
    send.add_argument("--rcs-text", help="+Message text when it differs from --text")
    send.add_argument("--client-ref", help="idempotency key (-1, -2... added for several --to)")
    send.add_argument("--send-at", help="scheduled send: ISO 8601 (JST without offset)")
    send.add_argument("--carrier", choices=CARRIERS, help="the recipient's carrier")
    send.add_argument("--callback-url", help="status callbacks to this http(s) URL")
    send.add_argument("--callback-every-change", action="store_true")
    send.add_argument(
        "--batch", help="JSON ({'messages': [...]}) or JSON lines of API items (- for stdin)"
    )

    status = command("status", _status, "a message's status and history")
    status.add_argument("id")

    cancel = command("cancel", _cancel, "cancel a message not yet handed to a carrier")
    cancel.add_argument("id")

    messages = command("messages", _messages, "find messages (newest first)")
    messages.add_argument(
        "--state", action="append", default=[], help="state (repeatable, or comma-separated)"
    )
    messages.add_argument("--to", help="mobile number")
    messages.add_argument(
        "--since", help="accepted at or after: ISO 8601, a date (JST) or a time ago (6h, 2d)"
    )
    messages.add_argument("--until", help="accepted before (same forms as --since)")
    messages.add_argument("--client-ref")
    messages.add_argument("--channel", choices=CHANNELS)
    messages.add_argument("--carrier", choices=CARRIERS)
    messages.add_argument("--limit", type=int, help="messages per page (the API's default: 50)")
    messages.add_argument("--cursor", help="the page after this cursor (from a previous page)")
    messages.add_argument("--all", action="store_true", help="follow every page")

    billing = command("billing", _billing, "billing units of a month")
    billing.add_argument("--month", help="YYYY-MM, a JST calendar month (default: this month)")

    optouts = sub.add_parser("optouts", help="the account's opt-out list")
    optouts_sub = optouts.add_subparsers(dest="optouts_command", required=True)

    def optouts_command(name: str, handler: ApiCommand, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = optouts_sub.add_parser(
            name, parents=[api], help=help_text
        )
        parser.set_defaults(func=lambda args: run_api_command(handler, args))
        return parser

    optouts_command("add", _optouts_add, "add numbers (all or none)").add_argument(
        "numbers", nargs="+", metavar="NUMBER"
    )
    optouts_command("show", _optouts_show, "when and how a number was added").add_argument("number")
    optouts_command("remove", _optouts_remove, "take a number off the list").add_argument("number")
    optouts_list = optouts_command("list", _optouts_list, "the list, in the order added")
    optouts_list.add_argument("--limit", type=int, help="numbers per page (the API's: 100)")
    optouts_list.add_argument("--cursor", help="the page after this cursor")
    optouts_list.add_argument("--all", action="store_true", help="follow every page")
    optouts_command("export", _optouts_export, "the list as CSV").add_argument(
        "--output", "-o", help="write to this file (default: standard output)"
    )
    optouts_command("import", _optouts_import, "add a CSV's numbers (all or none)").add_argument(
        "file", help="CSV, a number per row in the first column (- for stdin)"
    )

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_new = token_sub.add_parser("new", help="a new token and the digest for the config")
    token_new.add_argument("--account", help="the account it is for (names it in the hint)")
    token_new.add_argument(
        "--role",
        choices=TOKEN_ROLES,
        help="a token limited to a role: prints its [[accounts.X.api_tokens]] table",
    )
    token_new.add_argument("--name", help="the token's name in that table (default: the role)")
    token_new.add_argument("--json", action="store_true")
    token_new.set_defaults(func=lambda args: _token_new(args, sys.stdout))
