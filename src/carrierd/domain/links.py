"""Short links and opt-out URLs in message bodies (DOMAIN §12).

A body marks what carrierd replaces per recipient:

    {{link:https://example.jp/campaign?id=1}}   a short link (at most 5)
    {{optout_url}}                              the recipient's opt-out URL

Double braces because a URL cannot contain a brace unencoded (RFC 3986
leaves `{` and `}` out of every URL component), so the end of the marked
URL is never a guess, and because `{{...}}` reads as "filled in later" to
anyone who has used a template language. Any other `{{name}}` or
`{{name:...}}` is refused rather than sent as typed: `{{optout}}` going out
literally to ten thousand people is a mistake worth naming.

Each mark becomes the link with one space on each side, exactly
LINK_WIDTH (25) characters (§12): `" " + prefix + code + " "`, the prefix
being the configured scheme and domain ("https://s.example.jp/") and the
code filling the rest of the 23 visible characters. Because the width is
fixed, the length, parts and billing units of the text as sent are known
before any code is minted.

Codes are drawn with `secrets` from 62 letters and digits: a code of n
characters is one of 62**n (n = 8: 2.2e14, n = 10: 8.4e17). Someone
guessing must find one of the live codes among them; see README
"Short links" for the cost. A message's short links share a random key
of n - 1 characters, each link adding a character of its own (distinct
within the message): one stored row per message, and a guess must still
hit a live key and one of its links (store/schema/0190_link_sets.sql).

Pure apart from `mint_codes` (which takes its random source as an
argument): time is passed in.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from carrierd.domain.clock import require_aware
from carrierd.domain.sms_text import normalize_text, prepare_sms

# §12: a link with the space on each side.
LINK_WIDTH = 25
VISIBLE_WIDTH = LINK_WIDTH - 2
MAX_LINKS_PER_MESSAGE = 5
# Below this many code characters (62**8 = 2.2e14 codes) check-config
# refuses the domain: see README "Short links" for what guessing costs.
MIN_CODE_CHARS = 8
CODE_ALPHABET = string.ascii_letters + string.digits
MAX_TARGET_URL_CHARS = 2048
OPTOUT_VALID_DAYS = 60

_MARK = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_UNKNOWN_NAME = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*(:.*)?", re.DOTALL)
_CODE_CHARS = frozenset(CODE_ALPHABET)
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


class LinkMarkupError(ValueError):
    """A body's markup cannot be sent; the text says why."""


@dataclass(frozen=True)
class LinkStyle:
    """How a link looks in a body: `prefix` + code, VISIBLE_WIDTH in all."""

    domain: str
    # Handsets link a bare host with a known TLD; "https://" costs 8 of
    # the 23 characters.
    show_scheme: bool = False

    @cached_property
    def prefix(self) -> str:
        return f"{'https://' if self.show_scheme else ''}{self.domain}/"

    @cached_property
    def code_chars(self) -> int:
        return VISIBLE_WIDTH - len(self.prefix)


def style_problem(domain: str, show_scheme: bool) -> str | None:
    """Why a configured link domain cannot be used, or None."""
    if not _DOMAIN.fullmatch(domain):
        return f"{domain!r} is not a lower-case host name such as s.example.jp"
    style = LinkStyle(domain, show_scheme)
    if style.code_chars < MIN_CODE_CHARS:
        return (
            f"{style.prefix!r} leaves {style.code_chars} of the {VISIBLE_WIDTH} visible characters "
            f"for the code; at least {MIN_CODE_CHARS} are needed (a shorter domain"
            f"{', or show_scheme = false' if show_scheme else ''})"
        )
    return None


@dataclass(frozen=True)
class LinkMark:
    """A `{{link:URL}}`: `number` is its link (1-based) within the message."""

    number: int


@dataclass(frozen=True)
class OptOutMark:
    pass


Piece = str | LinkMark | OptOutMark


@dataclass(frozen=True)
class Template:
    pieces: tuple[Piece, ...]
    # Set where the pieces are made (Template.of): most bodies have no
    # marks, and intake asks every message's template.
    has_marks: bool = False
    has_optout: bool = False

    @classmethod
    def of(cls, pieces: tuple[Piece, ...]) -> Template:
        return cls(
            pieces,
            any(not isinstance(p, str) for p in pieces),
            any(isinstance(p, OptOutMark) for p in pieces),
        )

    @cached_property
    def render_forms(self) -> dict[str, _RenderForm]:
        """render's format strings by link prefix (filled in as used)."""
        return {}

    @cached_property
    def sms_forms(self) -> dict[tuple[str, int, bool], LinkedSms]:
        """prepare_linked_sms's answers by link prefix and text limits."""
        return {}

    def plain_text(self) -> str:
        """The text around the marks (what the charset check reads)."""
        return "".join(p for p in self.pieces if isinstance(p, str))


def target_url_problem(url: str) -> str | None:
    """Why `url` cannot be a short link's target, or None."""
    if not url:
        return "empty URL"
    if len(url) > MAX_TARGET_URL_CHARS:
        return f"URL longer than {MAX_TARGET_URL_CHARS} characters"
    # It becomes a Location header: ASCII without spaces or controls.
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "URL must be printable ASCII without spaces (percent-encode the rest)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"only http and https URLs can be shortened, not {parts.scheme or 'no scheme'!r}"
    if not parts.hostname:
        return "URL has no host"
    return None


def parse_template(text: str, links: list[str]) -> Template:
    """The pieces of one body. Link targets are numbered across the message:
    `links` holds the targets seen so far (other fields of the same message)
    and gains the new ones; the same URL twice is one link. Raises
    LinkMarkupError for an unknown mark, a bad URL, or a sixth link."""
    if "{{" not in text:
        return Template((text,))
    template, own_targets = _parse_cached(text)
    if not links:
        # The first body of its message numbers the links itself.
        links.extend(own_targets)
        return template
    pieces = template.pieces
    numbers: dict[int, int] = {}
    for own_number, url in enumerate(own_targets, start=1):
        if url not in links:
            if len(links) >= MAX_LINKS_PER_MESSAGE:
                raise LinkMarkupError(
                    f"more than {MAX_LINKS_PER_MESSAGE} links in one message (§12)"
                )
            links.append(url)
        numbers[own_number] = links.index(url) + 1
    if not numbers:
        return template
    return Template.of(
        tuple(LinkMark(numbers[p.number]) if isinstance(p, LinkMark) else p for p in pieces)
    )


@lru_cache(maxsize=256)
def _parse_cached(text: str) -> tuple[Template, tuple[str, ...]]:
    """One body's pieces, its links numbered by their first place in it. A
    campaign sends one body to thousands: it is read once."""
    pieces: list[Piece] = []
    targets: list[str] = []
    at = 0
    for match in _MARK.finditer(text):
        if match.start() > at:
            pieces.append(text[at : match.start()])
        at = match.end()
        inside = match.group(1)
        if inside == "optout_url":
            pieces.append(OptOutMark())
            continue
        if inside.startswith("link:"):
            url = inside[len("link:") :]
            problem = target_url_problem(url)
            if problem is not None:
                where = match.start() + 1
                raise LinkMarkupError(f"{{{{link:...}}}} at position {where}: {problem}")
            if url not in targets:
                if len(targets) >= MAX_LINKS_PER_MESSAGE:
                    raise LinkMarkupError(
                        f"more than {MAX_LINKS_PER_MESSAGE} links in one message (§12)"
                    )
                targets.append(url)
            pieces.append(LinkMark(targets.index(url) + 1))
            continue
        if _UNKNOWN_NAME.fullmatch(inside):
            raise LinkMarkupError(
                f"unknown mark {match.group(0)[:40]!r} at position {match.start() + 1}; "
                "known: {{link:URL}} and {{optout_url}}"
            )
        pieces.append(match.group(0))
    rest = text[at:]
    if "{{link:" in rest or "{{optout_url" in rest:
        raise LinkMarkupError("a {{link:...}} or {{optout_url}} mark is not closed with }}")
    if rest:
        pieces.append(rest)
    return Template.of(tuple(pieces)), tuple(targets)


def render(
    template: Template,
    link_key: str | None,
    link_suffixes: str,
    optout_code: str | None,
    style: LinkStyle,
) -> str:
    """The text as sent: each mark replaced by its link, LINK_WIDTH wide.
    Link n's code is `link_key` followed by `link_suffixes[n - 1]`
    (`mint_link_set`)."""
    form = template.render_forms.get(style.prefix)
    if form is None:
        form = template.render_forms[style.prefix] = _RenderForm.of(template, style.prefix)
    if form.link_numbers and (
        link_key is None
        or len(link_key) + 1 != style.code_chars
        or len(link_suffixes) < form.link_numbers[-1]
    ):
        raise ValueError(
            f"codes of {style.code_chars} characters for links {form.link_numbers} are needed, "
            f"got key {link_key!r} and suffixes {link_suffixes!r}"
        )
    if form.has_optout and (optout_code is None or len(optout_code) != style.code_chars):
        raise ValueError(f"a code of {style.code_chars} characters is needed, got {optout_code!r}")
    # A campaign renders one template for thousands of recipients: the
    # pieces are joined once into a format string, filled in C per recipient,
    # each link as the key and its suffix (no code strings built first).
    return form.text.format(link_key, link_suffixes, optout_code)


@dataclass(frozen=True)
class LinkedSms:
    """An SMS body with link marks, checked and measured as it will be sent:
    `template` with its text normalised (sms_text.normalize_text), to render
    per recipient, and the encoding and part count every rendering has."""

    template: Template
    encoding: str
    parts: int


def prepare_linked_sms(
    template: Template, style: LinkStyle, *, max_chars: int, allow_gsm7: bool
) -> LinkedSms:
    """sms_text.prepare_sms of `template` as sent, worked out once per
    template rather than per recipient; raises SmsTextError as prepare_sms
    would for every rendering.

    Every rendering is alike to prepare_sms: a link is the same LINK_WIDTH
    characters of `style.prefix`, letters and digits, which normalisation
    leaves alone (it maps character by character, link characters to
    themselves), which the charset takes, which are GSM 7-bit and which
    are one unit wide in either encoding. So the text is checked and
    measured once, rendered with stand-in codes, and a recipient's text is
    the normalised template rendered with its codes."""
    key = (style.prefix, max_chars, allow_gsm7)
    prepared = template.sms_forms.get(key)
    if prepared is not None:
        return prepared
    stand_in = render(
        template,
        "a" * (style.code_chars - 1),
        "a" * MAX_LINKS_PER_MESSAGE,
        "a" * style.code_chars,
        style,
    )
    body = prepare_sms(stand_in, max_chars=max_chars, allow_gsm7=allow_gsm7)
    pieces = tuple(normalize_text(p) if isinstance(p, str) else p for p in template.pieces)
    normalised = (
        template
        if pieces == template.pieces
        else Template(pieces, template.has_marks, template.has_optout)
    )
    prepared = template.sms_forms[key] = LinkedSms(normalised, body.encoding, len(body.parts))
    return prepared


@dataclass(frozen=True)
class _RenderForm:
    """A template as a str.format string for one link prefix: link n is
    field 0 (the key) followed by field 1's character n - 1 (its suffix),
    the opt-out URL field 2. `link_numbers` is sorted."""

    text: str
    link_numbers: tuple[int, ...]
    has_optout: bool

    @classmethod
    def of(cls, template: Template, prefix: str) -> _RenderForm:
        out: list[str] = []
        numbers: list[int] = []
        # The prefix is a host name (no braces), the text around the marks
        # may hold any: doubled, a brace stands for itself.
        for piece in template.pieces:
            if isinstance(piece, str):
                out.append(piece.replace("{", "{{").replace("}", "}}"))
            elif isinstance(piece, OptOutMark):
                out.append(f" {prefix}{{2}} ")
            else:
                numbers.append(piece.number)
                out.append(f" {prefix}{{0}}{{1[{piece.number - 1}]}} ")
        return cls("".join(out), tuple(sorted(set(numbers))), template.has_optout)


RandomBytes = Callable[[int], bytes]
# Bytes below this map evenly onto the 62 characters (248 = 4 * 62); the
# rest are dropped, so no character is likelier than another.
_EVEN_BELOW = 256 - 256 % len(CODE_ALPHABET)
_BYTE_TO_CHAR = bytes(ord(CODE_ALPHABET[b % len(CODE_ALPHABET)]) for b in range(256))
_UNEVEN_BYTES = bytes(range(_EVEN_BELOW, 256))


def _even_chars(count: int, random_bytes: RandomBytes) -> str:
    drawn = b""
    while len(drawn) < count:
        # ~3% of bytes are dropped: ask for a little more than needed.
        wanted = count - len(drawn)
        drawn += random_bytes(wanted + wanted // 16 + 8).translate(_BYTE_TO_CHAR, _UNEVEN_BYTES)
    return drawn[:count].decode("ascii")


class CodeCharPool:
    """Code characters for one intake request, drawn from `random_bytes`
    (the CSPRNG) a few KiB at a time and mapped onto CODE_ALPHABET as read:
    a read per message was a system call each, and mapping each message's
    few bytes on their own cost more than the codes' other work. Each
    character is handed out once, and the pool lives no longer than its
    request."""

    __slots__ = ("_at", "_chars", "_read")
    READ_CHARS = 4096

    def __init__(self, random_bytes: RandomBytes) -> None:
        self._read = random_bytes
        self._chars = ""
        self._at = 0

    def draw(self, count: int) -> str:
        at = self._at
        if at + count > len(self._chars):
            # What is left of the last read is dropped, never reused.
            self._chars = _even_chars(max(count, self.READ_CHARS), self._read)
            at = 0
        self._at = at + count
        return self._chars[at : at + count]


# A CSPRNG to read, or a pool of characters already drawn from one.
RandomSource = RandomBytes | CodeCharPool


def _draw_chars(count: int, random: RandomSource) -> str:
    if isinstance(random, CodeCharPool):
        return random.draw(count)
    return _even_chars(count, random)


def mint_codes(count: int, length: int, random: RandomSource = secrets.token_bytes) -> list[str]:
    """`count` fresh codes of `length` characters from CODE_ALPHABET, drawn
    from `random` (the CSPRNG or a pool of it; tests may pass their own) in
    one call for all of them."""
    text = _draw_chars(count * length, random)
    return [text[i * length : (i + 1) * length] for i in range(count)]


def mint_code(length: int, random: RandomSource = secrets.token_bytes) -> str:
    return mint_codes(1, length, random)[0]


def mint_link_set(
    count: int, length: int, random: RandomSource = secrets.token_bytes
) -> tuple[str, str]:
    """A key of `length` - 1 characters and `count` distinct characters, one
    per link: link n's code is key + suffixes[n - 1]. Each suffix is uniform
    over the characters its earlier siblings left."""
    if not 0 < count <= MAX_LINKS_PER_MESSAGE:
        raise ValueError(f"1 to {MAX_LINKS_PER_MESSAGE} links, not {count}")
    drawn = _draw_chars(length - 1 + count + 2, random)
    key, rest = drawn[: length - 1], drawn[length - 1 :]
    if len(set(rest[:count])) == count:
        # Most messages (5 links: 85%): what the loop below would pick.
        return key, rest[:count]
    suffixes = ""
    while True:
        for char in rest:
            if char not in suffixes:
                suffixes += char
                if len(suffixes) == count:
                    return key, suffixes
        rest = _draw_chars(count - len(suffixes) + 2, random)


# The shortest domain ("x.jp/") leaves 18 characters for a code.
MAX_CODE_CHARS = VISIBLE_WIDTH - len("x.jp/")


def is_code_shaped(text: str) -> bool:
    """Could `text` be a code at all (answered without the database)? Any
    length a configured domain can leave: links minted before a reload that
    changed the domain keep working beside the new ones."""
    return MIN_CODE_CHARS <= len(text) <= MAX_CODE_CHARS and set(text) <= _CODE_CHARS


def optout_expires_at(start: datetime, valid_days: float = OPTOUT_VALID_DAYS) -> datetime:
    """An opt-out URL is valid `valid_days` from when its message is due to
    go (§12: 60 days): a send scheduled far ahead still gets its 60 days."""
    require_aware(start, "start")
    return start + timedelta(days=valid_days)


def link_live(expires_at: datetime | None, now: datetime) -> bool:
    """May a link be followed at `now`? Short links have no expiry of their
    own (they live as long as their message's delivery log)."""
    require_aware(now, "now")
    return expires_at is None or now < expires_at


class MintedLink(NamedTuple):
    """One code to store with its message."""

    code: str
    kind: str  # "link" or "optout"
    link_no: int  # 1..5 for links, 0 for the opt-out URL
    target_url: str | None
    expires_at: datetime | None


# Not frozen: a frozen dataclass's __init__ cost 0.7 µs more per message
# of a batch with links; nothing changes one once minted.
@dataclass(slots=True)
class MintedLinks:
    """The codes minted for one recipient, stored with its message: its
    short links as one key and a suffix per link, its opt-out URL as a code
    of its own. One object per recipient, not one per code: intake makes
    them for every message of a 10,000-message batch, and the store sends
    them to PostgreSQL as a few strings per message (store/links.sql)."""

    link_key: str | None  # None without short links
    link_suffixes: str  # link n's at n - 1
    targets: tuple[str, ...]  # link n's target URL at n - 1
    optout_code: str | None
    optout_expires_at: datetime | None

    @property
    def link_codes(self) -> tuple[str, ...]:
        return tuple(map((self.link_key or "").__add__, self.link_suffixes))

    def __iter__(self) -> Iterator[MintedLink]:
        """The codes one by one: the links in order, then the opt-out URL."""
        for number, (code, url) in enumerate(zip(self.link_codes, self.targets, strict=True), 1):
            yield MintedLink(code, "link", number, url, None)
        if self.optout_code is not None:
            yield MintedLink(self.optout_code, "optout", 0, None, self.optout_expires_at)


def mint_links(
    targets: Sequence[str],
    with_optout: bool,
    style: LinkStyle,
    start: datetime,
    optout_valid_days: float,
    random: RandomSource = secrets.token_bytes,
) -> MintedLinks:
    """Codes for one recipient, to render (`render`) and store."""
    key: str | None = None
    suffixes = ""
    if targets:
        key, suffixes = mint_link_set(len(targets), style.code_chars, random)
    optout_code = mint_code(style.code_chars, random) if with_optout else None
    expires = optout_expires_at(start, optout_valid_days) if with_optout else None
    return MintedLinks(key, suffixes, tuple(targets), optout_code, expires)


def click_view(links: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """The short links of a message as its readers see them: per link its
    target, first click time and click count (opt-out URLs are not shown)."""
    view: list[dict[str, object]] = []
    for link in sorted(links, key=lambda r: int(str(r["link_no"]))):
        if link["kind"] != "link":
            continue
        first = link["first_click_at"]
        view.append(
            {
                "link": link["link_no"],
                "url": link["target_url"],
                "first_click_at": first.isoformat() if isinstance(first, datetime) else None,
                "clicks": link["clicks"],
            }
        )
    return view
