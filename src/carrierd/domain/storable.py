"""What client JSON may hold before any of it goes near PostgreSQL.

PostgreSQL's text and jsonb refuse NUL, a lone surrogate cannot be encoded
as UTF-8 on its way there, and int4/int8 columns refuse big numbers: each of
these used to surface as a database error for a whole batch. Finding them
here, with the path of the field, lets intake reject the one item that
holds them and store the rest.
"""

from __future__ import annotations

import math

# Deeper than any valid +Message item (item > rcs > carousel > cards[] >
# card > suggestions[] > suggestion is 7), shallow enough for any code
# that walks a value recursively.
MAX_NESTING = 16
# Every integer intake takes fits an int4 column.
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as PostgreSQL text, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains an unpaired surrogate at position {exc.start + 1}"
    return None


def unstorable(value: object, max_nesting: int = MAX_NESTING) -> tuple[str, str] | None:
    """The first part of a decoded JSON value that cannot be stored, as
    (path relative to `value`, reason), or None when all of it can."""
    found = _find(value, max_nesting, max_nesting)
    if found is None:
        return None
    segments, reason = found
    return "".join(reversed(segments)).lstrip("."), reason


def _find(value: object, depth_left: int, limit: int) -> tuple[list[str], str] | None:
    # Segments are collected innermost first and joined once, on failure only.
    if isinstance(value, str):
        problem = text_problem(value)
        return ([], problem) if problem else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            return [], f"number out of range ({INT_MIN}..{INT_MAX})"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ([], "not a finite number")
    if isinstance(value, dict | list) and depth_left <= 0:
        return [], f"nested deeper than {limit} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key) if isinstance(key, str) else None
            if problem:
                return [], f"a key {problem}"
            found = _find(item, depth_left - 1, limit)
            if found is not None:
                found[0].append(f".{key}")
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find(item, depth_left - 1, limit)
            if found is not None:
                found[0].append(f"[{index}]")
                return found
        return None
    return None
