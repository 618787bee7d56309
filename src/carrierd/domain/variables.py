"""Per-recipient variables in a send's content (DOMAIN §14, KMC sends).

A placeholder is `{{name}}`: two opening braces, the variable's name (any
characters but braces and line breaks; spaces around it are ignored, so
`{{ name }}` is `{{name}}`), two closing braces. Names are those of the
recipient's variables: the CSV columns after the number, by header, or the
keys of a JSON recipient's `variables`.

- Escaping: `\\{{` writes a literal `{{` (the backslash is dropped); a
  backslash anywhere else is an ordinary character. A `{{` that is not
  escaped and does not close is an error in the content, reported once for
  the whole send, not per recipient.
- Values are inserted as they are, and never read again for placeholders:
  a value holding `{{x}}` stays that text. No other escaping applies: SMS
  is plain text, and +Message fields are JSON strings (the encoder quotes
  them).
- A variable the recipient lacks, or whose value is empty (an empty CSV
  cell), rejects that recipient, naming the variable: a message that reads
  "様、ご予約..." is worse than none. The other recipients are sent.

Link marks (`{{link:URL}}`, `{{optout_url}}`, domain/links.py) are not
variables: they are kept as written, and intake replaces them with each
recipient's own links after the variables are filled in.

Where placeholders count: the SMS text, the +Message text, and the titles
and descriptions of rich cards (single or in a carousel), as the KMC
specification allows. Limits (660 characters, card title 200...) are
checked on the text after substitution, per recipient.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# An escaped opening, a whole placeholder, or an opening that never closes.
_PLACEHOLDER = re.compile(r"\\\{\{|\{\{([^{}\r\n]*)\}\}|\{\{")


class TemplateError(ValueError):
    """The content itself is wrong (an unclosed `{{`, an empty name)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MissingVariable(ValueError):
    """A recipient lacks a variable the content uses."""

    def __init__(self, field: str, name: str) -> None:
        super().__init__(f"{field}: no value for variable {name!r}")
        self.field = field
        self.name = name


@dataclass(frozen=True)
class Template:
    """One text with placeholders: literal pieces and names, alternating
    (pieces has one more element than names)."""

    pieces: tuple[str, ...]
    names: tuple[str, ...]

    def render(self, values: Mapping[str, str], field: str) -> str:
        if not self.names:
            return self.pieces[0]
        out = [self.pieces[0]]
        for name, piece in zip(self.names, self.pieces[1:], strict=True):
            value = values.get(name)
            if not value:
                raise MissingVariable(field, name)
            out.append(value)
            out.append(piece)
        return "".join(out)


def _is_link_mark(name: str) -> bool:
    return name == "optout_url" or name.startswith("link:")


def parse_template(text: str, field: str) -> Template:
    """`text` split into literal pieces and placeholder names."""
    pieces: list[str] = []
    names: list[str] = []
    current: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        current.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "\\{{":
            current.append("{{")
            continue
        if match.group(1) is None:
            raise TemplateError(
                field, f"'{{{{' at position {match.start()} does not close with '}}}}'"
            )
        name = match.group(1).strip()
        if _is_link_mark(name):
            current.append(token)
            continue
        if not name:
            raise TemplateError(field, f"empty variable name at position {match.start()}")
        pieces.append("".join(current))
        current = []
        names.append(name)
    current.append(text[position:])
    pieces.append("".join(current))
    return Template(tuple(pieces), tuple(names))


@dataclass(frozen=True)
class ContentTemplate:
    """A message item's content with its placeholders parsed: rendering it
    for a recipient gives the item's `sms` and `rcs` values."""

    sms: Mapping[str, Any] | None
    rcs: Mapping[str, Any] | None
    # (path of keys/indexes into the item, template): the fields to fill.
    slots: tuple[tuple[tuple[str | int, ...], Template], ...]

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(name for _, t in self.slots for name in t.names)

    def render(self, values: Mapping[str, str]) -> dict[str, Any]:
        """{"sms": ..., "rcs": ...} for one recipient; raises MissingVariable."""
        item: dict[str, Any] = {}
        if self.sms is not None:
            item["sms"] = self.sms
        if self.rcs is not None:
            item["rcs"] = self.rcs
        if not self.variables:
            return item
        item = _copy_paths(item, [path for path, _ in self.slots])
        for path, template in self.slots:
            target: Any = item
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = template.render(values, _field_name(path))
        return item


def compile_content(
    sms: Mapping[str, Any] | None, rcs: Mapping[str, Any] | None, prefix: str = ""
) -> ContentTemplate:
    """Parse the placeholders of an item's content (shape already checked);
    raises TemplateError naming the field (`prefix` before its path)."""
    slots: list[tuple[tuple[str | int, ...], Template]] = []

    def add(path: tuple[str | int, ...], value: object) -> None:
        if isinstance(value, str):
            template = parse_template(value, prefix + _field_name(path))
            if template.names or template.pieces[0] != value:
                slots.append((path, template))

    if sms is not None:
        add(("sms", "text"), sms.get("text"))
    if isinstance(rcs, Mapping):
        add(("rcs", "text"), rcs.get("text"))
        card = rcs.get("card")
        if isinstance(card, Mapping):
            for key in ("title", "description"):
                add(("rcs", "card", key), card.get(key))
        carousel = rcs.get("carousel")
        cards = carousel.get("cards") if isinstance(carousel, Mapping) else None
        if isinstance(cards, list):
            for i, each in enumerate(cards):
                if isinstance(each, Mapping):
                    for key in ("title", "description"):
                        add(("rcs", "carousel", "cards", i, key), each.get(key))
    return ContentTemplate(sms, rcs, tuple(slots))


def _field_name(path: tuple[str | int, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def _copy_paths(item: dict[str, Any], paths: list[tuple[str | int, ...]]) -> dict[str, Any]:
    """A copy of `item` in which the containers along `paths` are new (the
    template's own dicts and lists are shared by every recipient)."""
    fresh: set[int] = set()

    def copy(container: Any) -> Any:
        new = dict(container) if isinstance(container, Mapping) else list(container)
        fresh.add(id(new))
        return new

    root: dict[str, Any] = copy(item)
    for path in paths:
        target: Any = root
        for key in path[:-1]:
            child = target[key]
            if id(child) not in fresh:
                child = target[key] = copy(child)
            target = child
    return root
