"""Business SQL takes the time as a parameter, so that tests (and a daemon
whose clock is the reference) control it."""

import re

import pytest

from carrierd.store.db import QUERIES

_DATABASE_CLOCK = re.compile(
    r"\b(now\s*\(|current_timestamp|current_date|current_time|localtime|localtimestamp|"
    r"clock_timestamp|statement_timestamp|transaction_timestamp)",
    re.IGNORECASE,
)
# Comments may name the functions to say they are not used.
_COMMENT = re.compile(r"--[^\n]*")


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_no_named_statement_reads_the_database_clock(name: str) -> None:
    sql = _COMMENT.sub("", QUERIES[name])
    found = _DATABASE_CLOCK.search(sql)
    assert found is None, f"statement {name!r} reads the database clock: {found.group(0)!r}"


def test_the_pattern_catches_the_database_clock() -> None:
    assert _DATABASE_CLOCK.search("WHERE at < now() - interval '1 day'")
    assert _DATABASE_CLOCK.search("SET updated_at = CURRENT_TIMESTAMP")
    assert not _DATABASE_CLOCK.search("WHERE at < $1 AND nowhere = 1")
