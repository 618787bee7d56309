"""+Message content: our intake JSON, its rules (DOMAIN §7), and the MaaP body.

The `rcs` field of a message item is one of

    {"text": "..."}
    {"card": CARD}
    {"carousel": {"cards": [CARD, ...]}}

each optionally with `"chips": [SUGGESTION, ...]` (the chip list shown below
the message). A CARD is

    {"media": {"url": "https://...", "content_type": "image/png",
               "size_bytes": 12345, "height": "short" | "medium" | "tall"},
     "title": "...", "description": "...", "suggestions": [SUGGESTION, ...]}

where every key is optional but a card must show something (media, title or
description), and `height` defaults to `medium` (the only height a carousel
allows). A SUGGESTION is

    {"type": "url" | "dial" | "reply", "text": <display text>,
     "postback": <identifier>, "url": <for url>, "phone": <for dial>,
     "reply_validity_s": <optional int>}

`reply_validity_s` is how long the follow-up message that a tap triggers
stays valid (DOMAIN §7, none = unlimited). It is ours, for the auto-reply
logic (§14): the platform has no field for it, so `to_maap` leaves it out.

Validation reports every violation at once, each with a JSON path such as
`rcs.carousel.cards[2].title`, so a sender fixes a batch in one round trip.
Limits are a carrier's numbers: they live in `RcsLimits` with the §7 values as
defaults. Stored content is rebuilt with `content_from_json`, which checks the
shape but not the limits, so that lowering a limit never strands a message
that was accepted under the old one.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar, cast

MediaHeight: TypeAlias = Literal["short", "medium", "tall"]
SuggestionType: TypeAlias = Literal["url", "dial", "reply"]

MEDIA_HEIGHTS: tuple[MediaHeight, ...] = ("short", "medium", "tall")
SUGGESTION_TYPES: tuple[SuggestionType, ...] = ("url", "dial", "reply")
# The carriers' list is by format (gif, jpg, png, mp4); we name them by MIME
# type because that is what the platform's media descriptor carries.
MEDIA_CONTENT_TYPES: tuple[str, ...] = ("image/gif", "image/jpeg", "image/png", "video/mp4")
CAROUSEL_MEDIA_HEIGHT: MediaHeight = "medium"

_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
_PHONE = re.compile(r"\+?[0-9][0-9-]{1,23}")


@dataclass(frozen=True, kw_only=True)
class RcsLimits:
    """The §7 numbers. Characters are code points; bytes are UTF-16."""

    text_max_chars: int = 2730
    media_max_bytes: int = 5 * 1024 * 1024
    title_max_chars: int = 200
    title_max_utf16_bytes: int = 400
    description_max_chars: int = 500
    description_max_utf16_bytes: int = 1000
    card_max_suggestions: int = 4
    carousel_max_cards: int = 10
    chips_max: int = 10
    postback_max_chars: int = 40

    @classmethod
    def unbounded(cls) -> RcsLimits:
        """No size limits: for rebuilding content that was validated before."""
        big = sys.maxsize
        return cls(
            text_max_chars=big,
            media_max_bytes=big,
            title_max_chars=big,
            title_max_utf16_bytes=big,
            description_max_chars=big,
            description_max_utf16_bytes=big,
            card_max_suggestions=big,
            carousel_max_cards=big,
            chips_max=big,
            postback_max_chars=big,
        )


DEFAULT_LIMITS = RcsLimits()


@dataclass(frozen=True)
class Violation:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class RcsContentError(ValueError):
    """The content breaks one or more rules; `violations` lists them all."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(str(violation) for violation in violations))
        self.violations = violations


@dataclass(frozen=True)
class Suggestion:
    type: SuggestionType
    text: str
    postback: str
    url: str | None = None
    phone: str | None = None
    reply_validity_s: int | None = None


@dataclass(frozen=True)
class Media:
    url: str
    content_type: str
    size_bytes: int
    height: MediaHeight = "medium"


@dataclass(frozen=True)
class Card:
    media: Media | None = None
    title: str | None = None
    description: str | None = None
    suggestions: tuple[Suggestion, ...] = ()


@dataclass(frozen=True)
class TextBody:
    text: str


@dataclass(frozen=True)
class CardBody:
    card: Card


@dataclass(frozen=True)
class CarouselBody:
    cards: tuple[Card, ...]


RcsBody: TypeAlias = TextBody | CardBody | CarouselBody


@dataclass(frozen=True)
class RcsContent:
    body: RcsBody
    chips: tuple[Suggestion, ...] = field(default=())


def utf16_bytes(text: str) -> int:
    """Size in UTF-16: 2 bytes per BMP character, 4 per astral one (emoji)."""
    return len(text.encode("utf-16-le"))


# ---------------------------------------------------------------------------
# Validation


def validate_rcs(content: object, limits: RcsLimits = DEFAULT_LIMITS) -> RcsContent:
    """Check intake JSON against §7 and build `RcsContent`.

    Raises RcsContentError listing every violation found.
    """
    checker = _Checker(limits)
    result = checker.content(content, "rcs")
    if checker.violations or result is None:
        raise RcsContentError(checker.violations or [Violation("rcs", "invalid content")])
    return result


def content_from_json(data: object) -> RcsContent:
    """Rebuild stored content (the output of `content_to_json`).

    Shape and enumerations are checked; size limits are not (see module doc).
    """
    return validate_rcs(data, RcsLimits.unbounded())


_T = TypeVar("_T")
_R = TypeVar("_R")


class _Checker:
    """Walks the JSON once, collecting violations instead of stopping."""

    def __init__(self, limits: RcsLimits) -> None:
        self.limits = limits
        self.violations: list[Violation] = []

    def fail(self, path: str, reason: str) -> None:
        self.violations.append(Violation(path, reason))

    def content(self, value: object, path: str) -> RcsContent | None:
        data = self.mapping(
            value, path, required=(), optional=("text", "card", "carousel", "chips")
        )
        if data is None:
            return None
        kinds = [key for key in ("text", "card", "carousel") if key in data]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.fail(path, f"exactly one of text, card, carousel is required (found {found})")
        chips = self.suggestion_list(
            data.get("chips"), f"{path}.chips", self.limits.chips_max, "chips"
        )
        body: RcsBody | None = None
        if "text" in data:
            text = self.text(data["text"], f"{path}.text", self.limits.text_max_chars, None)
            body = TextBody(text) if text is not None else None
        if "card" in data:
            card = self.card(data["card"], f"{path}.card", in_carousel=False)
            body = CardBody(card) if card is not None else None
        if "carousel" in data:
            body = self.carousel(data["carousel"], f"{path}.carousel")
        if body is None or chips is None or len(kinds) != 1:
            return None
        return RcsContent(body=body, chips=chips)

    def carousel(self, value: object, path: str) -> CarouselBody | None:
        data = self.mapping(value, path, required=("cards",), optional=())
        if data is None or "cards" not in data:
            return None
        items = self.array(data["cards"], f"{path}.cards")
        if items is None:
            return None
        if not items:
            self.fail(f"{path}.cards", "a carousel needs at least 1 card")
        limit = self.limits.carousel_max_cards
        if len(items) > limit:
            self.fail(f"{path}.cards[{limit}]", f"at most {limit} cards (got {len(items)})")
        cards = [
            self.card(item, f"{path}.cards[{i}]", in_carousel=True) for i, item in enumerate(items)
        ]
        if not items or len(items) > limit:
            return None
        return _all_or_none(cards, lambda done: CarouselBody(tuple(done)))

    def card(self, value: object, path: str, *, in_carousel: bool) -> Card | None:
        data = self.mapping(
            value, path, required=(), optional=("media", "title", "description", "suggestions")
        )
        if data is None:
            return None
        ok = True
        if not any(data.get(key) is not None for key in ("media", "title", "description")):
            self.fail(path, "a card needs at least one of media, title, description")
            ok = False
        media: Media | None = None
        if data.get("media") is not None:
            media = self.media(data["media"], f"{path}.media", in_carousel=in_carousel)
            ok = ok and media is not None
        title: str | None = None
        if data.get("title") is not None:
            title = self.text(
                data["title"],
                f"{path}.title",
                self.limits.title_max_chars,
                self.limits.title_max_utf16_bytes,
            )
            ok = ok and title is not None
        description: str | None = None
        if data.get("description") is not None:
            description = self.text(
                data["description"],
                f"{path}.description",
                self.limits.description_max_chars,
                self.limits.description_max_utf16_bytes,
            )
            ok = ok and description is not None
        suggestions = self.suggestion_list(
            data.get("suggestions"),
            f"{path}.suggestions",
            self.limits.card_max_suggestions,
            "suggestions per card",
        )
        if not ok or suggestions is None:
            return None
        return Card(media=media, title=title, description=description, suggestions=suggestions)

    def media(self, value: object, path: str, *, in_carousel: bool) -> Media | None:
        data = self.mapping(
            value, path, required=("url", "content_type", "size_bytes"), optional=("height",)
        )
        if data is None:
            return None
        ok = True
        url = self.string(data.get("url"), f"{path}.url") if "url" in data else None
        if url is not None and not _URL.fullmatch(url):
            self.fail(f"{path}.url", "must be an http(s) URL")
            ok = False
        content_type: str | None = None
        if "content_type" in data:
            content_type = self.string(data["content_type"], f"{path}.content_type")
            if content_type is not None and content_type not in MEDIA_CONTENT_TYPES:
                allowed = ", ".join(MEDIA_CONTENT_TYPES)
                self.fail(f"{path}.content_type", f"{content_type!r} is not one of {allowed}")
                ok = False
        size_bytes: int | None = None
        if "size_bytes" in data:
            size_bytes = self.integer(data["size_bytes"], f"{path}.size_bytes")
            limit = self.limits.media_max_bytes
            if size_bytes is not None and not 0 < size_bytes <= limit:
                self.fail(f"{path}.size_bytes", f"must be 1..{limit} bytes (got {size_bytes})")
                ok = False
        height: MediaHeight = CAROUSEL_MEDIA_HEIGHT
        if "height" in data:
            raw_height = self.string(data["height"], f"{path}.height")
            if raw_height is None:
                ok = False
            elif raw_height not in MEDIA_HEIGHTS:
                self.fail(f"{path}.height", f"{raw_height!r} is not one of short, medium, tall")
                ok = False
            elif in_carousel and raw_height != CAROUSEL_MEDIA_HEIGHT:
                self.fail(
                    f"{path}.height",
                    f"carousel media height is fixed {CAROUSEL_MEDIA_HEIGHT}, got {raw_height!r}",
                )
                ok = False
            else:
                height = raw_height
        if not ok or url is None or content_type is None or size_bytes is None:
            return None
        return Media(url=url, content_type=content_type, size_bytes=size_bytes, height=height)

    def suggestion_list(
        self, value: object, path: str, limit: int, what: str
    ) -> tuple[Suggestion, ...] | None:
        if value is None:
            return ()
        items = self.array(value, path)
        if items is None:
            return None
        if len(items) > limit:
            self.fail(f"{path}[{limit}]", f"at most {limit} {what} (got {len(items)})")
        parsed = [self.suggestion(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if len(items) > limit:
            return None
        return _all_or_none(parsed, tuple)

    def suggestion(self, value: object, path: str) -> Suggestion | None:
        base = ("type", "text", "postback")
        data = self.mapping(
            value, path, required=(), optional=(*base, "url", "phone", "reply_validity_s")
        )
        if data is None:
            return None
        ok = True
        for key in base:
            if key not in data:
                self.fail(f"{path}.{key}", "is required")
                ok = False
        kind = self.string(data["type"], f"{path}.type") if "type" in data else None
        if kind is not None and kind not in SUGGESTION_TYPES:
            self.fail(f"{path}.type", f"{kind!r} is not one of url, dial, reply")
            kind = None
        needed = {"url": "url", "dial": "phone"}.get(kind or "")
        for key in ("url", "phone"):
            if kind is None:
                break
            if key == needed and key not in data:
                self.fail(f"{path}.{key}", f"is required for a {kind} suggestion")
                ok = False
            elif key != needed and key in data:
                self.fail(f"{path}.{key}", f"not allowed for a {kind} suggestion")
                ok = False
        text = self.text(data["text"], f"{path}.text", None, None) if "text" in data else None
        postback: str | None = None
        if "postback" in data:
            postback = self.text(
                data["postback"], f"{path}.postback", self.limits.postback_max_chars, None
            )
        url: str | None = None
        if needed == "url" and "url" in data:
            url = self.string(data["url"], f"{path}.url")
            if url is not None and not _URL.fullmatch(url):
                self.fail(f"{path}.url", "must be an http(s) URL")
                ok = False
        phone: str | None = None
        if needed == "phone" and "phone" in data:
            phone = self.string(data["phone"], f"{path}.phone")
            if phone is not None and not _PHONE.fullmatch(phone):
                self.fail(
                    f"{path}.phone", "must be digits, optionally with a leading + and hyphens"
                )
                ok = False
        validity_s: int | None = None
        if data.get("reply_validity_s") is not None:
            validity_s = self.integer(data["reply_validity_s"], f"{path}.reply_validity_s")
            if validity_s is not None and validity_s <= 0:
                self.fail(f"{path}.reply_validity_s", "must be a positive number of seconds")
                ok = False
        if not ok or kind is None or text is None or postback is None:
            return None
        if (needed == "url" and url is None) or (needed == "phone" and phone is None):
            return None
        return Suggestion(
            type=kind,
            text=text,
            postback=postback,
            url=url,
            phone=phone,
            reply_validity_s=validity_s,
        )

    # -- primitives ---------------------------------------------------------

    def mapping(
        self, value: object, path: str, *, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> Mapping[str, object] | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {_json_type(value)}")
            return None
        data = cast(Mapping[object, object], value)
        allowed = set(required) | set(optional)
        for key in data:
            if not isinstance(key, str) or key not in allowed:
                self.fail(f"{path}.{key}", "unknown key")
        for key in required:
            if key not in data:
                self.fail(f"{path}.{key}", "is required")
        return {key: item for key, item in data.items() if isinstance(key, str) and key in allowed}

    def array(self, value: object, path: str) -> list[object] | None:
        if not isinstance(value, list | tuple):
            self.fail(path, f"must be an array, got {_json_type(value)}")
            return None
        return list(cast(list[object] | tuple[object, ...], value))

    def string(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_json_type(value)}")
            return None
        return value

    def integer(self, value: object, path: str) -> int | None:
        # bool is an int subclass in Python, but `true` is not a size.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {_json_type(value)}")
            return None
        return value

    def text(
        self, value: object, path: str, max_chars: int | None, max_utf16_bytes: int | None
    ) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        ok = True
        if not text.strip():
            self.fail(path, "must not be empty")
            ok = False
        if max_chars is not None and len(text) > max_chars:
            self.fail(path, f"at most {max_chars} characters (got {len(text)})")
            ok = False
        if max_utf16_bytes is not None:
            size = utf16_bytes(text)
            if size > max_utf16_bytes:
                self.fail(path, f"at most {max_utf16_bytes} bytes in UTF-16 (got {size})")
                ok = False
        return text if ok else None


def _all_or_none(items: list[_T | None], build: Callable[[list[_T]], _R]) -> _R | None:
    done = [item for item in items if item is not None]
    return build(done) if len(done) == len(items) else None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Storage form (our intake JSON, with defaults filled in)


def content_to_json(content: RcsContent) -> dict[str, object]:
    """The canonical intake JSON of validated content (for a jsonb column)."""
    data: dict[str, object]
    body = content.body
    if isinstance(body, TextBody):
        data = {"text": body.text}
    elif isinstance(body, CardBody):
        data = {"card": _card_to_json(body.card)}
    else:
        data = {"carousel": {"cards": [_card_to_json(card) for card in body.cards]}}
    if content.chips:
        data["chips"] = [_suggestion_to_json(chip) for chip in content.chips]
    return data


def _card_to_json(card: Card) -> dict[str, object]:
    data: dict[str, object] = {}
    if card.media is not None:
        data["media"] = {
            "url": card.media.url,
            "content_type": card.media.content_type,
            "size_bytes": card.media.size_bytes,
            "height": card.media.height,
        }
    if card.title is not None:
        data["title"] = card.title
    if card.description is not None:
        data["description"] = card.description
    if card.suggestions:
        data["suggestions"] = [_suggestion_to_json(s) for s in card.suggestions]
    return data


def _suggestion_to_json(suggestion: Suggestion) -> dict[str, object]:
    data: dict[str, object] = {
        "type": suggestion.type,
        "text": suggestion.text,
        "postback": suggestion.postback,
    }
    if suggestion.url is not None:
        data["url"] = suggestion.url
    if suggestion.phone is not None:
        data["phone"] = suggestion.phone
    if suggestion.reply_validity_s is not None:
        data["reply_validity_s"] = suggestion.reply_validity_s
    return data


# ---------------------------------------------------------------------------
# MaaP form

_MAAP_HEIGHTS: dict[MediaHeight, str] = {
    "short": "SHORT_HEIGHT",
    "medium": "MEDIUM_HEIGHT",
    "tall": "TALL_HEIGHT",
}


def to_maap(content: RcsContent) -> dict[str, object]:
    """The content part of a MaaP `RCSMessage` (the caller adds `msgId`)."""
    message: dict[str, object]
    body = content.body
    if isinstance(body, TextBody):
        message = {"textMessage": body.text}
    elif isinstance(body, CardBody):
        message = {
            "richcardMessage": {
                "message": {
                    "generalPurposeCard": {
                        "layout": {"cardOrientation": "VERTICAL"},
                        "content": _card_to_maap(body.card),
                    }
                }
            }
        }
    else:
        message = {
            "richcardMessage": {
                "message": {
                    "generalPurposeCardCarousel": {
                        "layout": {"cardWidth": "MEDIUM_WIDTH"},
                        "content": [_card_to_maap(card) for card in body.cards],
                    }
                }
            }
        }
    if content.chips:
        message["suggestedChipList"] = {
            "suggestions": [_suggestion_to_maap(chip) for chip in content.chips]
        }
    return message


def _card_to_maap(card: Card) -> dict[str, object]:
    data: dict[str, object] = {}
    if card.media is not None:
        data["media"] = {
            "mediaUrl": card.media.url,
            "mediaContentType": card.media.content_type,
            "mediaFileSize": card.media.size_bytes,
            "height": _MAAP_HEIGHTS[card.media.height],
        }
    if card.title is not None:
        data["title"] = card.title
    if card.description is not None:
        data["description"] = card.description
    if card.suggestions:
        data["suggestions"] = [_suggestion_to_maap(s) for s in card.suggestions]
    return data


def _suggestion_to_maap(suggestion: Suggestion) -> dict[str, object]:
    common: dict[str, object] = {
        "displayText": suggestion.text,
        "postback": {"data": suggestion.postback},
    }
    if suggestion.type == "reply":
        return {"reply": common}
    if suggestion.type == "url":
        return {"action": {**common, "urlAction": {"openUrl": {"url": suggestion.url}}}}
    return {
        "action": {**common, "dialerAction": {"dialPhoneNumber": {"phoneNumber": suggestion.phone}}}
    }
