"""Only the lifecycle writer changes a message's state.

Every state change is a checked Move applied by engine/lifecycle.py through
the `apply_moves` statement; history without a state change goes through
`apply_notes`, from the same module. This test reads the SQL and the
Python source: a statement that sets messages.state or writes
message_events outside those, or code elsewhere that runs them, fails it.
"""

from __future__ import annotations

import re
from pathlib import Path

from carrierd.store.db import QUERIES

SRC = Path(__file__).resolve().parents[2] / "src" / "carrierd"
WRITER = SRC / "engine" / "lifecycle.py"
STATE_STATEMENTS = frozenset({"apply_moves"})
HISTORY_STATEMENTS = frozenset({"apply_moves", "apply_notes"})
# Intake creates messages in their initial state, with their 'accepted'
# event (states.INITIAL_STATES): a creation, not a change. A send's
# messages (and its waiting follow-ups, in scheduled) are intake too.
CREATION_STATEMENTS = frozenset({"insert_messages", "insert_send_messages"})

_UPDATE_MESSAGES = re.compile(
    r"\bUPDATE\s+messages\b(?:\s+\w+)?\s+SET\b(?P<set>.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|;|$)",
    re.IGNORECASE | re.DOTALL,
)
_SETS_STATE = re.compile(r"(?:^|[\s,])state\s*=", re.IGNORECASE)
_INSERTS_HISTORY = re.compile(r"\bINSERT\s+INTO\s+message_events\b", re.IGNORECASE)
_INSERTS_MESSAGES = re.compile(r"\bINSERT\s+INTO\s+messages\b", re.IGNORECASE)


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def statements_setting_state() -> set[str]:
    found = set()
    for name, sql in QUERIES.items():
        for update in _UPDATE_MESSAGES.finditer(_without_comments(sql)):
            if _SETS_STATE.search(update.group("set")):
                found.add(name)
    return found


def test_only_apply_moves_sets_a_messages_state() -> None:
    assert statements_setting_state() == STATE_STATEMENTS


def test_only_the_writer_and_intake_write_history_or_create_messages() -> None:
    history = {n for n, sql in QUERIES.items() if _INSERTS_HISTORY.search(_without_comments(sql))}
    creators = {n for n, sql in QUERIES.items() if _INSERTS_MESSAGES.search(_without_comments(sql))}
    assert history <= HISTORY_STATEMENTS | CREATION_STATEMENTS, history
    assert creators <= CREATION_STATEMENTS, creators


def test_only_engine_lifecycle_runs_the_writer_statements() -> None:
    callers: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for name in HISTORY_STATEMENTS:
            if re.search(rf"[\"']{name}[\"']", text):
                callers.setdefault(name, set()).add(str(path.relative_to(SRC)))
    assert callers == {name: {"engine/lifecycle.py"} for name in HISTORY_STATEMENTS}


def test_the_detector_sees_a_state_update() -> None:
    sql = "UPDATE messages m SET updated_at = $2, state = 'queued' WHERE m.state = 'sending'"
    assert _SETS_STATE.search(_UPDATE_MESSAGES.search(sql).group("set"))  # type: ignore[union-attr]
    where_only = "UPDATE messages SET not_before = $1 WHERE state = 'queued'"
    assert not _SETS_STATE.search(_UPDATE_MESSAGES.search(where_only).group("set"))  # type: ignore[union-attr]
