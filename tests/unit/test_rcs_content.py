"""+Message content rules (DOMAIN §7): every limit at the edge, paths, MaaP form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.domain.rcs_content import (
    CardBody,
    CarouselBody,
    RcsContent,
    RcsContentError,
    RcsLimits,
    TextBody,
    Violation,
    content_from_json,
    content_to_json,
    to_maap,
    utf16_bytes,
    validate_rcs,
)

EMOJI = "\U0001f600"  # one character, 4 bytes in UTF-16
MB5 = 5 * 1024 * 1024


def media(**overrides: Any) -> dict[str, Any]:
    return {
        "url": "https://cdn.example.jp/a.png",
        "content_type": "image/png",
        "size_bytes": 1024,
        **overrides,
    }


def reply(postback: str = "yes", **overrides: Any) -> dict[str, Any]:
    return {"type": "reply", "text": "はい", "postback": postback, **overrides}


def violations_of(content: object) -> list[Violation]:
    with pytest.raises(RcsContentError) as caught:
        validate_rcs(content)
    return caught.value.violations


def paths_of(content: object) -> set[str]:
    return {violation.path for violation in violations_of(content)}


# -- text ---------------------------------------------------------------------


def test_text_at_limit_is_accepted_and_one_over_is_rejected() -> None:
    assert validate_rcs({"text": "あ" * 2730}).body == TextBody("あ" * 2730)
    [violation] = violations_of({"text": "あ" * 2731})
    assert violation.path == "rcs.text"
    assert "2730" in violation.reason


@given(st.integers(min_value=1, max_value=3000))
@settings(max_examples=60)
def test_text_accepted_exactly_up_to_2730_characters(length: int) -> None:
    content = {"text": "字" * length}
    if length <= 2730:
        validate_rcs(content)
    else:
        assert paths_of(content) == {"rcs.text"}


def test_empty_text_rejected() -> None:
    assert paths_of({"text": "  "}) == {"rcs.text"}


# -- card: media ----------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["image/gif", "image/jpeg", "image/png", "video/mp4"])
def test_allowed_media_types(content_type: str) -> None:
    validate_rcs({"card": {"media": media(content_type=content_type)}})


@pytest.mark.parametrize("content_type", ["image/webp", "video/webm", "application/pdf", "png"])
def test_other_media_types_rejected(content_type: str) -> None:
    [violation] = violations_of({"card": {"media": media(content_type=content_type)}})
    assert violation.path == "rcs.card.media.content_type"
    assert content_type in violation.reason


def test_media_size_limit_is_5_mib() -> None:
    validate_rcs({"card": {"media": media(size_bytes=MB5)}})
    [violation] = violations_of({"card": {"media": media(size_bytes=MB5 + 1)}})
    assert violation.path == "rcs.card.media.size_bytes"


@pytest.mark.parametrize("height", ["short", "medium", "tall"])
def test_card_media_heights(height: str) -> None:
    content = validate_rcs({"card": {"media": media(height=height)}})
    assert isinstance(content.body, CardBody)
    assert content.body.card.media is not None
    assert content.body.card.media.height == height


def test_card_media_height_defaults_to_medium() -> None:
    content = validate_rcs({"card": {"media": media()}})
    assert isinstance(content.body, CardBody)
    assert content.body.card.media is not None
    assert content.body.card.media.height == "medium"


def test_media_wrong_types_and_missing_keys_named_by_path() -> None:
    bad = {"card": {"media": {"url": "ftp://x", "size_bytes": True, "height": "huge"}}}
    assert paths_of(bad) == {
        "rcs.card.media.url",
        "rcs.card.media.size_bytes",
        "rcs.card.media.height",
        "rcs.card.media.content_type",
    }


# -- card: title, description ------------------------------------------------------


def test_title_200_characters_accepted_201_rejected() -> None:
    validate_rcs({"card": {"title": "題" * 200}})
    [violation] = [
        v for v in violations_of({"card": {"title": "題" * 201}}) if "characters" in v.reason
    ]
    assert violation.path == "rcs.card.title"


def test_title_utf16_byte_limit_bites_on_astral_characters() -> None:
    # 199 BMP characters + 1 emoji: 200 characters but 402 bytes.
    title = "題" * 199 + EMOJI
    assert len(title) == 200
    assert utf16_bytes(title) == 402
    [violation] = violations_of({"card": {"title": title}})
    assert violation.path == "rcs.card.title"
    assert "400 bytes" in violation.reason
    # 198 + 1 emoji = 199 characters, 400 bytes: exactly at the limit.
    validate_rcs({"card": {"title": "題" * 198 + EMOJI}})


def test_description_limits() -> None:
    validate_rcs({"card": {"description": "説" * 500}})
    validate_rcs({"card": {"description": "説" * 498 + EMOJI}})  # 1,000 bytes
    assert paths_of({"card": {"description": "説" * 501}}) == {"rcs.card.description"}
    [violation] = violations_of({"card": {"description": "説" * 499 + EMOJI}})
    assert "1000 bytes" in violation.reason


@given(
    st.text(
        alphabet=st.sampled_from(["a", "あ", EMOJI, "題"]),
        min_size=1,
        max_size=260,
    )
)
@settings(max_examples=100)
def test_title_rule_is_both_characters_and_utf16_bytes(title: str) -> None:
    ok = len(title) <= 200 and len(title.encode("utf-16-le")) <= 400
    if ok:
        validate_rcs({"card": {"title": title}})
    else:
        assert paths_of({"card": {"title": title}}) == {"rcs.card.title"}


def test_card_must_show_something() -> None:
    assert paths_of({"card": {"suggestions": [reply()]}}) == {"rcs.card"}


# -- suggestions and chips ------------------------------------------------------------


def test_four_suggestions_per_card_accepted_fifth_rejected_by_path() -> None:
    four = [reply(f"p{i}") for i in range(4)]
    validate_rcs({"card": {"title": "t", "suggestions": four}})
    [violation] = violations_of({"card": {"title": "t", "suggestions": [*four, reply("p4")]}})
    assert violation.path == "rcs.card.suggestions[4]"


@given(st.integers(min_value=0, max_value=14))
def test_chip_list_at_most_10(count: int) -> None:
    content = {"text": "t", "chips": [reply(f"c{i}") for i in range(count)]}
    if count <= 10:
        assert len(validate_rcs(content).chips) == count
    else:
        assert paths_of(content) == {"rcs.chips[10]"}


def test_postback_40_characters_accepted_41_rejected() -> None:
    validate_rcs({"text": "t", "chips": [reply("p" * 40)]})
    [violation] = violations_of({"text": "t", "chips": [reply("p" * 40), reply("p" * 41)]})
    assert violation.path == "rcs.chips[1].postback"


def test_suggestion_types_need_their_action() -> None:
    content = {
        "text": "t",
        "chips": [
            {"type": "url", "text": "開く", "postback": "open"},
            {"type": "dial", "text": "電話", "postback": "call", "url": "https://x.jp"},
            {"type": "reply", "text": "はい", "postback": "y", "phone": "0120"},
            {"type": "share", "text": "x", "postback": "z"},
            {"type": "url", "text": "開く", "postback": "o", "url": "javascript:alert(1)"},
            {"type": "dial", "text": "電話", "postback": "c", "phone": "call me"},
            {"text": "x"},
        ],
    }
    assert paths_of(content) == {
        "rcs.chips[0].url",
        "rcs.chips[1].phone",
        "rcs.chips[1].url",
        "rcs.chips[2].phone",
        "rcs.chips[3].type",
        "rcs.chips[4].url",
        "rcs.chips[5].phone",
        "rcs.chips[6].type",
        "rcs.chips[6].postback",
    }


def test_reply_validity_must_be_a_positive_integer() -> None:
    content = validate_rcs({"text": "t", "chips": [reply(reply_validity_s=3600)]})
    assert content.chips[0].reply_validity_s == 3600
    bad = {
        "text": "t",
        "chips": [
            reply(reply_validity_s=0),
            reply(reply_validity_s=1.5),
            reply(reply_validity_s="1"),
        ],
    }
    assert paths_of(bad) == {f"rcs.chips[{i}].reply_validity_s" for i in range(3)}


# -- carousel -----------------------------------------------------------------------


def carousel_card(i: int, **media_overrides: Any) -> dict[str, Any]:
    return {"title": f"card {i}", "media": media(**media_overrides)}


def test_carousel_1_to_10_cards() -> None:
    validate_rcs({"carousel": {"cards": [carousel_card(0)]}})
    content = validate_rcs({"carousel": {"cards": [carousel_card(i) for i in range(10)]}})
    assert isinstance(content.body, CarouselBody)
    assert len(content.body.cards) == 10
    assert paths_of({"carousel": {"cards": []}}) == {"rcs.carousel.cards"}
    assert paths_of({"carousel": {"cards": [carousel_card(i) for i in range(11)]}}) == {
        "rcs.carousel.cards[10]"
    }


def test_carousel_height_fixed_medium_and_other_height_named() -> None:
    validate_rcs({"carousel": {"cards": [carousel_card(0, height="medium")]}})
    [violation] = violations_of(
        {"carousel": {"cards": [carousel_card(0), carousel_card(1, height="tall")]}}
    )
    assert violation.path == "rcs.carousel.cards[1].media.height"
    assert "'tall'" in violation.reason


def test_every_violation_is_reported_not_just_the_first() -> None:
    content = {
        "carousel": {
            "cards": [
                {"title": "t" * 201},
                {"title": "ok", "description": 5},
                {"media": media(content_type="image/bmp")},
                {"title": "ok", "suggestions": [reply("p" * 41)] * 5},
            ],
            "width": "wide",
        },
        "chips": [reply(), {"type": "reply"}],
        "extra": True,
    }
    paths = paths_of(content)
    assert paths == {
        "rcs.extra",
        "rcs.carousel.width",
        "rcs.carousel.cards[0].title",
        "rcs.carousel.cards[1].description",
        "rcs.carousel.cards[2].media.content_type",
        "rcs.carousel.cards[3].suggestions[4]",
        *{f"rcs.carousel.cards[3].suggestions[{i}].postback" for i in range(5)},
        "rcs.chips[1].text",
        "rcs.chips[1].postback",
    }


# -- top level shape ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "path"),
    [
        ("hello", "rcs"),
        ([], "rcs"),
        ({}, "rcs"),
        ({"text": "a", "card": {"title": "b"}}, "rcs"),
        ({"text": 5}, "rcs.text"),
        ({"card": "x"}, "rcs.card"),
        ({"carousel": {"cards": "x"}}, "rcs.carousel.cards"),
        ({"carousel": {}}, "rcs.carousel.cards"),
        ({"text": "a", "chips": {}}, "rcs.chips"),
        ({"text": "a", "chips": ["x"]}, "rcs.chips[0]"),
        ({"text": "a", "colour": "red"}, "rcs.colour"),
    ],
)
def test_shape_errors_named_by_path(content: object, path: str) -> None:
    assert path in paths_of(content)


def test_error_message_lists_every_violation() -> None:
    with pytest.raises(RcsContentError) as caught:
        validate_rcs({"text": "", "chips": [reply("p" * 41)]})
    assert "rcs.text" in str(caught.value)
    assert "rcs.chips[0].postback" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_limits_are_configuration() -> None:
    tight = RcsLimits(text_max_chars=10)
    validate_rcs({"text": "x" * 10}, tight)
    with pytest.raises(RcsContentError):
        validate_rcs({"text": "x" * 11}, tight)


# -- storage and MaaP --------------------------------------------------------------------

suggestions = st.one_of(
    st.builds(
        lambda t, p, v: {"type": "reply", "text": t, "postback": p, "reply_validity_s": v},
        st.text(min_size=1, max_size=10).filter(str.strip),
        st.text(min_size=1, max_size=40).filter(str.strip),
        st.none() | st.integers(min_value=1, max_value=10**6),
    ),
    st.builds(
        lambda p: {"type": "url", "text": "開く", "postback": p, "url": "https://example.jp/x?a=1"},
        st.text(min_size=1, max_size=40).filter(str.strip),
    ),
    st.builds(
        lambda p: {"type": "dial", "text": "電話", "postback": p, "phone": "+81-3-1234-5678"},
        st.text(min_size=1, max_size=40).filter(str.strip),
    ),
)
cards = st.fixed_dictionaries(
    {"title": st.text(min_size=1, max_size=50).filter(str.strip)},
    optional={
        "media": st.builds(
            media,
            content_type=st.sampled_from(["image/gif", "image/jpeg", "image/png", "video/mp4"]),
            size_bytes=st.integers(min_value=1, max_value=MB5),
        ),
        "description": st.text(min_size=1, max_size=100).filter(str.strip),
        "suggestions": st.lists(suggestions, max_size=4),
    },
)
bodies = st.one_of(
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=100).filter(str.strip)}),
    st.fixed_dictionaries({"card": cards}),
    st.fixed_dictionaries(
        {"carousel": st.fixed_dictionaries({"cards": st.lists(cards, min_size=1, max_size=10)})}
    ),
)
valid_contents = st.tuples(bodies, st.lists(suggestions, max_size=10)).map(
    lambda pair: {**pair[0], "chips": pair[1]} if pair[1] else pair[0]
)


@given(valid_contents)
@settings(max_examples=150)
def test_storage_round_trip(data: dict[str, Any]) -> None:
    content = validate_rcs(data)
    stored = json.loads(json.dumps(content_to_json(content)))
    assert content_from_json(stored) == content
    assert content_to_json(content_from_json(stored)) == stored


@given(valid_contents)
@settings(max_examples=100)
def test_to_maap_is_json_and_has_one_body(data: dict[str, Any]) -> None:
    maap = to_maap(validate_rcs(data))
    json.dumps(maap)
    assert ("textMessage" in maap) != ("richcardMessage" in maap)
    assert ("suggestedChipList" in maap) == bool(data.get("chips"))


def test_content_from_json_does_not_recheck_limits() -> None:
    # Accepted under a wider limit, rebuilt after the limit was lowered.
    stored = {"text": "x" * 3000}
    assert content_from_json(stored).body == TextBody("x" * 3000)
    with pytest.raises(RcsContentError):
        content_from_json({"text": 5})


def test_maap_text_with_chips() -> None:
    content = validate_rcs(
        {
            "text": "ご予約を承りました",
            "chips": [
                reply("ok"),
                {"type": "url", "text": "詳細", "postback": "info", "url": "https://x.jp/r"},
                {"type": "dial", "text": "電話", "postback": "tel", "phone": "0120123456"},
            ],
        }
    )
    assert to_maap(content) == {
        "textMessage": "ご予約を承りました",
        "suggestedChipList": {
            "suggestions": [
                {"reply": {"displayText": "はい", "postback": {"data": "ok"}}},
                {
                    "action": {
                        "displayText": "詳細",
                        "postback": {"data": "info"},
                        "urlAction": {"openUrl": {"url": "https://x.jp/r"}},
                    }
                },
                {
                    "action": {
                        "displayText": "電話",
                        "postback": {"data": "tel"},
                        "dialerAction": {"dialPhoneNumber": {"phoneNumber": "0120123456"}},
                    }
                },
            ]
        },
    }


def test_maap_card_and_carousel() -> None:
    card = validate_rcs({"card": {"media": media(height="tall"), "title": "T", "description": "D"}})
    assert to_maap(card) == {
        "richcardMessage": {
            "message": {
                "generalPurposeCard": {
                    "layout": {"cardOrientation": "VERTICAL"},
                    "content": {
                        "media": {
                            "mediaUrl": "https://cdn.example.jp/a.png",
                            "mediaContentType": "image/png",
                            "mediaFileSize": 1024,
                            "height": "TALL_HEIGHT",
                        },
                        "title": "T",
                        "description": "D",
                    },
                }
            }
        }
    }
    carousel = to_maap(validate_rcs({"carousel": {"cards": [carousel_card(0), {"title": "b"}]}}))
    gp = carousel["richcardMessage"]["message"]["generalPurposeCardCarousel"]  # type: ignore[index]
    assert gp["layout"] == {"cardWidth": "MEDIUM_WIDTH"}
    assert [c.get("title") for c in gp["content"]] == ["card 0", "b"]
    assert gp["content"][0]["media"]["height"] == "MEDIUM_HEIGHT"


def test_reply_validity_stays_ours() -> None:
    content = validate_rcs({"text": "t", "chips": [reply(reply_validity_s=60)]})
    assert "validity" not in json.dumps(to_maap(content))
    assert content_to_json(content)["chips"] == [
        {"type": "reply", "text": "はい", "postback": "yes", "reply_validity_s": 60}
    ]


def test_content_is_frozen() -> None:
    content = validate_rcs({"text": "t"})
    assert isinstance(content, RcsContent)
    with pytest.raises(AttributeError):
        content.chips = ()  # type: ignore[misc]
