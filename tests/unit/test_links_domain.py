"""Link marks (DOMAIN §12): parsing, the 25-character links, intake's
length and parts on the text as sent, the config's domain check, and the
link server's pure helpers (rate limits, client address, CSRF token)."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.config import AccountConfig, ConfigError, parse_config
from carrierd.domain.links import (
    CODE_ALPHABET,
    LINK_WIDTH,
    LinkMarkupError,
    LinkStyle,
    link_live,
    mint_code,
    mint_codes,
    mint_link_set,
    mint_links,
    optout_expires_at,
    parse_template,
    prepare_linked_sms,
    render,
    style_problem,
)
from carrierd.domain.reasons import Reason
from carrierd.domain.sms_text import SmsTextError, prepare_sms
from carrierd.http.links import AddressLimiter, client_address, csrf_token, csrf_valid
from carrierd.intake import LINKS_KEY, LinkMinting, request_sha256, validate_batch, validate_fed

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
STYLE = LinkStyle("s.kmc.jp")
ACCOUNT = AccountConfig("acme", token_sha256=())


def counting_bytes() -> Any:
    """A deterministic 'random' source: codes differ, tests are repeatable."""
    counter = itertools.count()
    return lambda n: bytes(next(counter) % 248 for _ in range(n))


def minting(**kw: Any) -> LinkMinting:
    return LinkMinting(STYLE, 60.0, kw.get("random_bytes", counting_bytes()))


def intake(items: list[dict[str, Any]], mint: LinkMinting | None = None) -> Any:
    return validate_batch(
        {"messages": items},
        ACCOUNT,
        NOW,
        max_items=100,
        expiry_s=72 * 3600,
        minting=mint if mint is not None else minting(),
    )


def test_each_mark_becomes_a_link_25_characters_wide_with_its_spaces() -> None:
    links: list[str] = []
    template = parse_template("詳細は{{link:https://ex.jp/a?b=1}}、停止は{{optout_url}}", links)
    assert links == ["https://ex.jp/a?b=1"]
    text = render(template, "A" * 13, "C", "B" * STYLE.code_chars, STYLE)
    assert text == f"詳細は s.kmc.jp/{'A' * 13}C 、停止は s.kmc.jp/{'B' * 14} "
    assert len(text) == len("詳細は、停止は") + 2 * LINK_WIDTH


def test_link_n_is_the_key_and_the_nth_suffix_and_short_codes_are_refused() -> None:
    template = parse_template("{{link:https://a.jp/1}}と{{link:https://a.jp/2}}", [])
    assert render(template, "K" * 13, "xy", None, STYLE) == (
        f" s.kmc.jp/{'K' * 13}x と s.kmc.jp/{'K' * 13}y "
    )
    with pytest.raises(ValueError, match="links"):
        render(template, "K" * 13, "x", None, STYLE)
    with pytest.raises(ValueError, match="links"):
        render(template, "K" * 12, "xy", None, STYLE)
    with pytest.raises(ValueError, match="links"):
        render(template, None, "", None, STYLE)
    optout = parse_template("停止は{{optout_url}}", [])
    with pytest.raises(ValueError, match="14 characters"):
        render(optout, None, "", "B" * 13, STYLE)


@given(st.sampled_from(["x.jp", "s.kmc.jp", "go.example.jp"]), st.booleans())
def test_every_allowed_style_fills_exactly_23_visible_characters(domain: str, scheme: bool) -> None:
    style = LinkStyle(domain, scheme)
    if style_problem(domain, scheme) is not None:
        assert style.code_chars < 8
        return
    template = parse_template("{{link:https://a.jp/}}", [])
    key, suffixes = mint_link_set(1, style.code_chars)
    assert len(render(template, key, suffixes, None, style)) == LINK_WIDTH


def test_marks_that_cannot_be_sent_are_refused_with_the_reason() -> None:
    with pytest.raises(LinkMarkupError, match="only http and https"):
        parse_template("{{link:javascript:alert(1)}}", [])
    with pytest.raises(LinkMarkupError, match="more than 5 links"):
        parse_template("".join(f"{{{{link:https://a.jp/{n}}}}}" for n in range(6)), [])
    with pytest.raises(LinkMarkupError, match="unknown mark"):
        parse_template("停止は{{optout}}", [])
    with pytest.raises(LinkMarkupError, match="not closed"):
        parse_template("{{link:https://a.jp/", [])
    with pytest.raises(LinkMarkupError, match="printable ASCII"):
        parse_template("{{link:https://例え.jp/}}", [])
    # The same URL twice is one link; braces that are no mark stay text.
    links: list[str] = []
    template = parse_template("{{link:https://a.jp/}} {{link:https://a.jp/}} {{ }}", links)
    assert links == ["https://a.jp/"]
    assert "{{ }}" in template.plain_text()


def test_codes_come_from_the_62_letters_and_digits_evenly() -> None:
    codes = {mint_code(14) for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 14 and set(c) <= set(CODE_ALPHABET) for c in codes)
    # Every byte value below 248 is one character, four bytes each; the
    # bytes above would favour the first eight characters and are dropped.
    uneven_first = bytes(range(248, 256)) + bytes(range(248))
    [code] = mint_codes(1, 248, lambda n: uneven_first[:n])
    assert Counter(code) == dict.fromkeys(CODE_ALPHABET, 4)


def test_a_message_s_links_share_a_key_and_differ_in_a_last_character_of_their_own() -> None:
    for count in range(1, 6):
        key, suffixes = mint_link_set(count, 14)
        assert len(key) == 13 and set(key + suffixes) <= set(CODE_ALPHABET)
        assert len(suffixes) == count == len(set(suffixes))
    # A source repeating one character: the repeats are drawn past, so two
    # links of a message never share a code.
    repeats = bytes([0] * 40) + bytes(range(1, 248))
    drawn = iter([repeats[:21], repeats[21:40], repeats[40:]])
    key, suffixes = mint_link_set(5, 14, lambda n: next(drawn)[:n])
    assert key == "a" * 13 and len(set(suffixes)) == 5 and suffixes.startswith("a")
    with pytest.raises(ValueError):
        mint_link_set(6, 14)


def test_minted_links_name_each_code_with_its_number_and_target() -> None:
    style = LinkStyle("s.kmc.jp")
    minted = mint_links(["https://a.jp/1", "https://a.jp/2"], True, style, NOW, 60.0)
    link_codes, optout = minted.link_codes, minted.optout_code
    assert minted.link_key is not None and link_codes == tuple(
        minted.link_key + s for s in minted.link_suffixes
    )
    assert [(m.code, m.kind, m.link_no, m.target_url) for m in minted] == [
        (link_codes[0], "link", 1, "https://a.jp/1"),
        (link_codes[1], "link", 2, "https://a.jp/2"),
        (optout, "optout", 0, None),
    ]
    assert optout is not None and len(optout) == style.code_chars
    assert not optout.startswith(minted.link_key)
    only_optout = mint_links([], True, style, NOW, 60.0)
    assert (only_optout.link_key, only_optout.link_suffixes, only_optout.link_codes) == (
        None,
        "",
        (),
    )


def test_an_optout_url_lives_60_days_from_when_its_message_goes() -> None:
    expires = optout_expires_at(NOW + timedelta(days=10))
    assert expires == NOW + timedelta(days=70)
    assert link_live(expires, expires - timedelta(seconds=1))
    assert not link_live(expires, expires)
    assert link_live(None, NOW + timedelta(days=3650))


def test_parts_and_the_660_limit_follow_the_text_as_sent() -> None:
    # 60 characters + one link = 85: two parts, where the marked-up text
    # (60 + 33) would also be two, but 45 + link = 70 is one part.
    head = "あ" * 45
    batch = intake([{"to": "09012345678", "sms": {"text": head + "{{link:https://ex.jp/}}"}}])
    [row] = batch.rows
    assert len(row["sms_text"]) == 45 + LINK_WIDTH
    assert batch.parts == [1] == [len(prepare_sms(row["sms_text"]).parts)]
    batch = intake([{"to": "09012345678", "sms": {"text": "あ" * 46 + "{{link:https://a.jp/}}"}}])
    assert batch.parts == [2]
    # 640 characters and a link are 665 as sent: over 660.
    batch = intake([{"to": "09012345678", "sms": {"text": "あ" * 640 + "{{optout_url}}"}}])
    [rejected] = batch.rejected
    assert rejected.field == "sms.text"
    assert "665 characters" in rejected.reason and "as sent" in rejected.reason


# Characters that normalisation maps (NBSP, a CP932 wave dash, a dash), that
# the charset refuses (CR alone, half-width kana, emoji, euro), that GSM 7-bit
# counts double (^) or lacks (あ), and marks.
_BODY_PIECES = st.sampled_from(
    ["あ", "a", " ", "\n", "\r", "\r\n", "\u00a0", "\uff5e", "\u2014", "ｱ", "😀", "€", "^"]
)
_MARKS = st.sampled_from(
    ["{{link:https://ex.jp/1}}", "{{link:https://ex.jp/2}}", "{{optout_url}}", "{", "}"]
)


@given(
    st.lists(
        st.one_of(st.tuples(_BODY_PIECES, st.integers(1, 40)), st.tuples(_MARKS, st.just(1))),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([LinkStyle("x.jp"), STYLE, LinkStyle("go.example.jp", show_scheme=True)]),
    st.integers(1, 660),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_a_linked_body_measured_once_is_every_recipient_s_text_as_sent(
    runs: list[tuple[str, int]], style: LinkStyle, max_chars: int, allow_gsm7: bool, rng: Any
) -> None:
    text = "".join(piece * count for piece, count in runs)
    try:
        template = parse_template(text, [])
    except LinkMarkupError:  # a "{" and a "}" around other text
        return
    if not template.has_marks:
        return
    key = "".join(rng.choice(CODE_ALPHABET) for _ in range(style.code_chars - 1))
    suffixes = "".join(rng.sample(CODE_ALPHABET, 5))
    optout = "".join(rng.choice(CODE_ALPHABET) for _ in range(style.code_chars))
    try:
        body = prepare_sms(
            render(template, key, suffixes, optout, style),
            max_chars=max_chars,
            allow_gsm7=allow_gsm7,
        )
        expected: object = (body.text, body.encoding, len(body.parts))
    except SmsTextError as exc:
        expected = (exc.reason, str(exc))
    try:
        linked = prepare_linked_sms(template, style, max_chars=max_chars, allow_gsm7=allow_gsm7)
        measured: object = (
            render(linked.template, key, suffixes, optout, style),
            linked.encoding,
            linked.parts,
        )
    except SmsTextError as exc:
        measured = (exc.reason, str(exc))
    assert measured == expected


def test_intake_names_the_field_of_a_bad_mark() -> None:
    items = [
        {"to": "09012345678", "sms": {"text": "{{link:ftp://a.jp/f}}"}},
        {
            "to": "09012345678",
            "channel": "rcs",
            "rcs": {"text": "".join(f"{{{{link:https://a.jp/{n}}}}}" for n in range(6))},
        },
        {
            "to": "09012345678",
            "channel": "rcs",
            "rcs": {
                "text": "hi",
                "chips": [{"type": "url", "text": "go", "url": "{{link:https://a.jp/}}"}],
            },
        },
    ]
    batch = intake(items)
    assert [(r.index, r.field) for r in batch.rejected] == [
        (0, "sms.text"),
        (1, "rcs.text"),
        (2, "rcs.chips[0].url"),
    ]
    without = validate_batch(
        {"messages": [{"to": "09012345678", "sms": {"text": "{{optout_url}}"}}]},
        ACCOUNT,
        NOW,
        max_items=1,
        expiry_s=60.0,
        minting=None,
    )
    assert "[links] enabled" in without.rejected[0].reason


def test_links_are_minted_per_recipient_and_shared_between_sms_and_rcs() -> None:
    body = "ご案内 {{link:https://ex.jp/1}} 停止 {{optout_url}}"
    batch = intake(
        [
            {"to": "09012345678", "sms": {"text": body}},
            {
                "to": "09012345679",
                "channel": "rcs_then_sms",
                "rcs": {"text": body},
                "sms": {"text": body},
            },
        ]
    )
    first, second = batch.rows
    codes = {link.code for row in batch.rows for link in row[LINKS_KEY]}
    assert len(codes) == 4  # a link and an opt-out URL each, all distinct
    [link, optout] = second[LINKS_KEY]
    assert (link.kind, link.link_no, link.target_url) == ("link", 1, "https://ex.jp/1")
    assert (optout.kind, optout.expires_at) == ("optout", NOW + timedelta(days=60))
    # The +Message text and its SMS fallback carry the same links.
    assert second["rcs_content"]["text"] == second["sms_text"]
    assert link.code in second["sms_text"] and optout.code in second["sms_text"]
    assert first["sms_text"] != second["sms_text"]


def test_a_retry_is_the_same_content_though_its_codes_are_new() -> None:
    item = {"to": "09012345678", "sms": {"text": "{{link:https://ex.jp/}}"}, "client_ref": "r"}
    one = intake([item], minting(random_bytes=counting_bytes())).rows[0]
    two = intake([item], LinkMinting(STYLE, 60.0)).rows[0]
    assert one["sms_text"] != two["sms_text"]
    assert request_sha256(one) == request_sha256(two)
    other = {**item, "sms": {"text": "{{link:https://ex.jp/other}}"}}
    assert request_sha256(intake([other]).rows[0]) != request_sha256(one)


def config_with_links(**links: Any) -> dict[str, Any]:
    return {
        "database": {"dsn": "postgresql://x/y"},
        "links": {"enabled": True, "csrf_secret": "s" * 32, **links},
    }


def test_check_config_refuses_a_domain_that_leaves_too_short_a_code() -> None:
    ok = parse_config(config_with_links(domain="s.kmc.jp"), env={})
    assert LinkStyle(ok.links.domain).code_chars == 14
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with_links(domain="links.example.co.jp", show_scheme=True), env={})
    assert any(p.startswith("links.domain:") and "at least 8" in p for p in refused.value.problems)
    # "links.example.jp/" leaves 6: too few to be safe, though it fits.
    with pytest.raises(ConfigError) as six:
        parse_config(config_with_links(domain="links.example.jp"), env={})
    assert any("leaves 6 of the 23" in p for p in six.value.problems)
    with pytest.raises(ConfigError) as no_secret:
        parse_config({**config_with_links(domain="s.kmc.jp"), "links": {"enabled": True}}, env={})
    assert any(p.startswith("links.csrf_secret:") for p in no_secret.value.problems)


def test_an_address_out_of_misses_is_refused_everything_until_they_refill() -> None:
    limiter = AddressLimiter(rate_per_s=100.0, burst=100, misses_per_s=1.0, miss_burst=3)
    for _ in range(3):
        assert limiter.allow("198.51.100.7", 0.0)
        limiter.missed("198.51.100.7", 0.0)
    assert not limiter.allow("198.51.100.7", 0.0)
    assert limiter.allow("198.51.100.8", 0.0)  # another address is not touched
    assert limiter.allow("198.51.100.7", 1.0)  # one miss refilled
    busy = AddressLimiter(rate_per_s=1.0, burst=2, misses_per_s=1.0, miss_burst=3)
    assert [busy.allow("a", 0.0) for _ in range(3)] == [True, True, False]


def test_the_client_is_the_last_untrusted_forwarded_address() -> None:
    proxies = (ip_network("10.0.0.0/8"),)
    assert client_address("10.0.0.2", "203.0.113.9, 10.0.0.3", proxies) == "203.0.113.9"
    # A peer that is no trusted proxy cannot name someone else.
    assert client_address("198.51.100.1", "203.0.113.9", proxies) == "198.51.100.1"
    assert client_address("10.0.0.2", "1.2.3.4, 203.0.113.9", proxies) == "203.0.113.9"
    assert client_address("10.0.0.2", None, ()) == "10.0.0.2"


def test_a_csrf_token_is_bound_to_its_code_and_nonce() -> None:
    token = csrf_token("secret-secret-16", "Abc", "nonce")
    assert csrf_valid("secret-secret-16", "Abc", "nonce", token)
    assert not csrf_valid("secret-secret-16", "Abd", "nonce", token)
    assert not csrf_valid("secret-secret-16", "Abc", "other", token)
    assert not csrf_valid("another-secret-1", "Abc", "nonce", token)
    assert not csrf_valid("secret-secret-16", "Abc", None, token)


def test_the_sql_feed_refuses_marks_rather_than_send_them_as_typed() -> None:
    refused = validate_fed("09012345678", "sms", "停止は{{optout_url}}", None, ACCOUNT)
    assert isinstance(refused, Reason) and refused.text.startswith("sms.text: link marks")
    rcs = validate_fed("09012345678", "rcs", None, {"text": "{{link:https://a.jp/}}"}, ACCOUNT)
    assert isinstance(rcs, Reason) and rcs.text.startswith("rcs.text:")
    assert not isinstance(validate_fed("09012345678", "sms", "{{ }}", None, ACCOUNT), Reason)


def test_braces_around_the_marks_go_out_as_written() -> None:
    # render fills a format string: the body's own braces must not be read
    # as fields of it.
    body = "価格{100}円 {{link:https://ex.jp/}} {0} }{ {{optout_url}} {optout}"
    template = parse_template(body, [])
    text = render(template, "A" * 13, "A", "B" * STYLE.code_chars, STYLE)
    link, optout = f" s.kmc.jp/{'A' * 14} ", f" s.kmc.jp/{'B' * 14} "
    assert text == f"価格{{100}}円 {link} {{0}} }}{{ {optout} {{optout}}"


def test_a_request_pool_reads_the_csprng_in_chunks_and_never_hands_out_a_character_twice() -> None:
    import os

    from carrierd.domain.links import CodeCharPool, mint_codes

    stream = os.urandom(1 << 17)
    reads: list[tuple[int, int]] = []

    def read(n: int) -> bytes:
        start = reads[-1][1] if reads else 0
        reads.append((start, start + n))
        return stream[start : start + n]

    # The characters the stream stands for, each byte below 248 one of them.
    even = bytes(b for b in stream if b < 248)
    chars = "".join(CODE_ALPHABET[b % 62] for b in even)
    pool = CodeCharPool(read)
    drawn = [pool.draw(n) for n in (10, 60, 4000, 70, 9000, 5, 5, 5)]
    assert [len(d) for d in drawn] == [10, 60, 4000, 70, 9000, 5, 5, 5]
    # 200 messages of five 10-character links: a handful of reads, not 200.
    codes = [code for _ in range(200) for code in mint_codes(5, 10, pool)]
    assert len(reads) < 10
    assert len(set(codes)) == len(codes)
    # Each draw is a run of what was read, after the one before it.
    at = 0
    for chunk in drawn:
        found = chars.find(chunk, at)
        assert found >= at, "a character handed out twice, or not from the CSPRNG"
        at = found + len(chunk)
