"""Short links and opt-out URLs through real HTTP (DOMAIN §12): intake mints
them, the public link server redirects and logs clicks, the opt-out page
confirms by POST with CSRF protection, and the click and open log shows in
the message view, the export and the callbacks."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from carrierd.config import Config, load_config
from carrierd.daemon import Daemon
from carrierd.domain.clock import FakeClock
from carrierd.http.links import CSRF_COOKIE, CSRF_FIELD, LinkServer, start_link_server
from carrierd.ops.callbacks import CallbackSender, GuardedClient, enqueue_callback
from carrierd.ops.retention import purge_expired, purge_optout_links
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import auth, make_config, running_api
from tests.metric_samples import counter_values

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
DOMAIN = "s.kmc.jp"
CODE = re.compile(re.escape(DOMAIN) + r"/([A-Za-z0-9]{14})")
BODY = "ご予約の詳細は{{link:https://shop.example.jp/r?id=7}}、配信停止は{{optout_url}}"


def links_config(dsn: str, **links: Any) -> Config:
    return make_config(
        dsn,
        {
            "links": {
                "enabled": True,
                "domain": DOMAIN,
                "csrf_secret": "links-test-csrf-secret",
                "secure_cookies": False,
                **links,
            }
        },
    )


@dataclass
class Rig:
    api: str
    links: str
    session: aiohttp.ClientSession
    clock: FakeClock
    db: Database
    server: LinkServer
    metrics: Metrics

    async def send(self, text: str = BODY, **item: Any) -> tuple[int, list[str], int]:
        """Post one message; its id, the codes in its text, its parts."""
        body = {"messages": [{"to": "090-1234-5678", "sms": {"text": text}, **item}]}
        async with self.session.post(
            f"{self.api}/v1/messages", json=body, headers=auth("acme-token")
        ) as response:
            answer = await response.json()
            assert response.status == 202, answer
        [accepted] = answer["accepted"]
        message_id = int(accepted["id"])
        [row] = await self.db.call_raw("SELECT sms_text FROM messages WHERE id = $1", message_id)
        return message_id, CODE.findall(row["sms_text"]), accepted["parts"]

    async def get(self, code: str, **kw: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(
            f"{self.links}/{code}", allow_redirects=False, **kw
        ) as response:
            return response.status, await response.text(), response

    async def view(self, message_id: int) -> dict[str, Any]:
        async with self.session.get(
            f"{self.api}/v1/messages/{message_id}", headers=auth("acme-token")
        ) as response:
            assert response.status == 200
            document: dict[str, Any] = await response.json()
            return document

    async def link_row(self, code: str) -> dict[str, Any]:
        [row] = await self.db.call_raw("SELECT * FROM message_links WHERE code = $1", code)
        return row

    def answers(self) -> dict[str, float]:
        """carrierd_link_answers_total by answer, those above zero."""
        counted = counter_values(self.metrics, "carrierd_link_answers", "answer")
        return {answer: n for answer, n in counted.items() if n}

    async def listed(self) -> list[tuple[str, str]]:
        rows = await self.db.call_raw(
            "SELECT msisdn, source FROM optouts WHERE account_id = 'acme'"
        )
        return [(r["msisdn"], r["source"]) for r in rows]


@asynccontextmanager
async def rig(dsn: str, db: Database, optout_cap: int = 10_000, **links: Any) -> AsyncIterator[Rig]:
    config = links_config(dsn, **links)
    clock = FakeClock(T0)
    metrics = Metrics()
    async with running_api(config, db, clock) as (api, session):
        server = await start_link_server(
            config.links,
            db,
            clock,
            optout_cap=lambda _account_id: optout_cap,
            metrics=metrics,
            host="127.0.0.1",
            port=0,
        )
        # A jar that keeps cookies of a bare IP address, as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            try:
                yield Rig(
                    api, f"http://127.0.0.1:{server.port}", browser, clock, db, server, metrics
                )
            finally:
                await server.stop()
        del session


async def test_a_click_redirects_and_keeps_its_first_time(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        message_id, [link, optout], _ = await r.send()
        status, _, response = await r.get(link)
        assert status == 302
        assert response.headers["Location"] == "https://shop.example.jp/r?id=7"
        assert response.headers["Cache-Control"] == "no-store"
        first = r.clock.now()
        r.clock.advance(3600)
        for _ in range(2):
            assert (await r.get(link))[0] == 302
        row = await r.link_row(link)
        assert (row["clicks"], row["first_click_at"], row["last_click_at"]) == (
            3,
            first,
            r.clock.now(),
        )
        view = await r.view(message_id)
        assert view["links"] == [
            {
                "link": 1,
                "url": "https://shop.example.jp/r?id=7",
                "first_click_at": first.isoformat(),
                "clicks": 3,
            }
        ]
        assert view["opened_at"] is None
        # The opt-out URL is not a short link of the view.
        assert optout not in json.dumps(view["links"])


async def test_unknown_and_malformed_codes_get_a_plain_404_page(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        for code in ("A" * 14, "short", "%E3%81%82" * 2, "A" * 14 + "/more"):
            status, text, response = await r.get(code)
            assert status == 404, code
            assert response.content_type == "text/html"
            assert "リンクが見つかりません" in text and "Traceback" not in text
        status, text, _ = await r.get("")
        assert status == 404 and "<html" in text
        # A HEAD (a scanner's) counts nothing and shows nothing.
        _, [link, _], _ = await r.send()
        async with r.session.head(f"{r.links}/{link}", allow_redirects=False) as response:
            assert response.status == 405
        assert (await r.link_row(link))["clicks"] == 0


async def test_optout_get_shows_the_page_and_post_confirms(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        _, [_, optout], _ = await r.send()
        status, text, response = await r.get(optout)
        assert status == 200
        assert "配信停止のお手続き" in text and "090-****-5678" in text
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert await r.listed() == []  # opening the page opts nobody out
        token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', text)
        assert token is not None
        async with r.session.post(
            f"{r.links}/{optout}", data={CSRF_FIELD: token.group(1)}
        ) as response:
            assert response.status == 200
            assert "配信を停止しました" in await response.text()
        assert await r.listed() == [("+819012345678", "optout_url")]
        assert (await r.link_row(optout))["confirmed_at"] == r.clock.now()


async def test_a_post_without_the_cookie_or_token_opts_nobody_out(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        _, [_, optout], _ = await r.send()
        _, text, _ = await r.get(optout)
        token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', text)
        assert token is not None
        # Another site's form: the browser sends no cookie (SameSite=Strict).
        async with (
            aiohttp.ClientSession() as elsewhere,
            elsewhere.post(f"{r.links}/{optout}", data={CSRF_FIELD: token.group(1)}) as response,
        ):
            assert response.status == 403
            assert "もう一度ボタンを押してください" in await response.text()
        # The cookie without the token, or with another code's token.
        async with r.session.post(f"{r.links}/{optout}", data={}) as response:
            assert response.status == 403
        async with r.session.post(
            f"{r.links}/{optout}", data={CSRF_FIELD: "0" * 64}, cookies={CSRF_COOKIE: "x"}
        ) as response:
            assert response.status == 403
        assert await r.listed() == []


async def test_an_optout_url_expires_after_60_days(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        _, [link, optout], _ = await r.send()
        _, text, _ = await r.get(optout)
        token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', text)
        assert token is not None
        r.clock.advance(timedelta(days=60).total_seconds())
        status, text, _ = await r.get(optout)
        assert status == 410 and "有効期限が切れています" in text
        async with r.session.post(
            f"{r.links}/{optout}", data={CSRF_FIELD: token.group(1)}
        ) as response:
            assert response.status == 410
        assert await r.listed() == []
        # The short link lives on with its message.
        assert (await r.get(link))[0] == 302
        # Retention takes the expired opt-out URL, not the short link.
        assert await purge_optout_links(db, r.clock.now()) == 1
        # Its click log with it: the page was opened once, the link is kept.
        clicked = await db.call_raw("SELECT code FROM link_clicks")
        assert [row["code"] for row in clicked] == [link]
        assert (await r.get(optout))[0] == 404
        assert (await r.get(link))[0] == 302


async def test_guessing_runs_out_of_misses_and_then_even_a_real_code_is_refused(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db, miss_burst=3, misses_per_min=1) as r:
        _, [link, _], _ = await r.send()
        for n in range(3):
            assert (await r.get(f"{'Z' * 13}{n}"))[0] == 404
        status, text, response = await r.get(link)
        assert status == 429 and "しばらくお待ちください" in text
        assert response.headers["Retry-After"] == "60"
        assert (await r.link_row(link))["clicks"] == 0


async def test_every_request_of_an_address_is_limited(dsn: str, db: Database) -> None:
    async with rig(dsn, db, burst=4, rate_per_s=0.01) as r:
        _, [link, _], _ = await r.send()
        statuses = [(await r.get(link))[0] for _ in range(6)]
        assert statuses == [302] * 4 + [429] * 2
        assert (await r.link_row(link))["clicks"] == 4


async def test_intake_counts_parts_on_the_text_as_sent(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        # 45 characters and a link: 70 as sent, one part; 46: two.
        _, _, parts = await r.send("あ" * 45 + "{{link:https://a.jp/}}")
        assert parts == 1
        _, _, parts = await r.send("あ" * 46 + "{{link:https://a.jp/}}")
        assert parts == 2
        body = {"messages": [{"to": "09012345678", "sms": {"text": "あ" * 640 + "{{optout_url}}"}}]}
        async with r.session.post(
            f"{r.api}/v1/messages", json=body, headers=auth("acme-token")
        ) as response:
            answer = await response.json()
        assert response.status == 422
        assert answer["rejected"][0]["field"] == "sms.text"
        assert "665" in answer["rejected"][0]["reason"]
        # Stored in the order of the body, each with its kind and number.
        message_id, codes, _ = await r.send(
            "{{link:https://a.jp/1}}{{optout_url}}{{link:https://a.jp/2}}{{link:https://a.jp/1}}"
        )
        rows = await db.call_raw(
            "SELECT code, kind, link_no, target_url, expires_at FROM message_links"
            " WHERE message_id = $1 ORDER BY link_no",
            message_id,
        )
        assert [(r["kind"], r["link_no"], r["target_url"], r["expires_at"]) for r in rows] == [
            ("optout", 0, None, T0 + timedelta(days=60)),
            ("link", 1, "https://a.jp/1", None),
            ("link", 2, "https://a.jp/2", None),
        ]
        assert codes == [rows[1]["code"], rows[0]["code"], rows[2]["code"], rows[1]["code"]]
        # An idempotent retry keeps the first message's links.
        item = {"client_ref": "once"}
        first_id, first_codes, _ = await r.send(**item)
        again_id, again_codes, _ = await r.send(**item)
        assert (again_id, again_codes) == (first_id, first_codes)
        assert (
            len(await db.call_raw("SELECT 1 FROM message_links WHERE message_id = $1", first_id))
            == 2
        )
        # ...and stores none of its own.
        orphans = await db.call_raw(
            "SELECT code FROM message_links l"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = l.message_id)"
        )
        assert orphans == []


async def test_the_export_and_the_callbacks_carry_the_click_log(dsn: str, db: Database) -> None:
    received: list[dict[str, Any]] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/cb", receiver)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with rig(dsn, db) as r:
            message_id, [link, _], _ = await r.send()
            await r.get(link)
            clicked = r.clock.now().isoformat()
            params = {
                "from": (T0 - timedelta(hours=1)).isoformat(),
                "to": (T0 + timedelta(hours=1)).isoformat(),
            }
            async with r.session.get(
                f"{r.api}/v1/messages/export", params=params, headers=auth("acme-token")
            ) as response:
                [line] = list(csv.DictReader(io.StringIO(await response.text())))
            assert json.loads(line["links"])[0]["first_click_at"] == clicked
            assert line["opened_at"] == ""

            async def queue(tx: Any) -> None:
                await enqueue_callback(
                    tx,
                    message_id,
                    "acme",
                    f"http://127.0.0.1:{port}/cb",
                    {"id": str(message_id)},
                    T0,
                )

            await db.in_transaction(queue)
            client = GuardedClient()
            try:
                sender = CallbackSender(
                    db,
                    client,
                    lambda _a: "",
                    r.clock,
                    Metrics(),
                    allowed_networks=lambda _a: (ip_network("127.0.0.0/8"),),
                )
                assert await sender.run_once(r.clock.now()) == 1
            finally:
                await client.close()
            [payload] = received
            assert payload["links"][0]["first_click_at"] == clicked
            assert payload["links"][0]["clicks"] == 1
    finally:
        await runner.cleanup()


async def test_links_and_their_clicks_go_with_their_message(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        old_id, [old_link, _], _ = await r.send()
        kept_id, [kept_link, _], _ = await r.send()
        await r.get(old_link)
        await db.call_raw(
            "INSERT INTO message_opens (message_id, opened_at, recorded_at) VALUES ($1, $2, $2)",
            old_id,
            T0,
        )
        # One message ended 101 days ago, the other is still going.
        await db.call_raw(
            "UPDATE messages SET state = 'delivered', final_at = $2 WHERE id = $1",
            old_id,
            T0 - timedelta(days=101),
        )
        assert await purge_expired(db, T0) == 1
        left = await db.call_raw("SELECT DISTINCT message_id FROM message_links")
        assert [row["message_id"] for row in left] == [kept_id]
        assert await db.call_raw("SELECT 1 FROM message_opens") == []
        assert await db.call_raw("SELECT 1 FROM link_clicks") == []
        assert (await r.get(old_link))[0] == 404
        assert (await r.get(kept_link))[0] == 302


async def test_a_full_optout_list_shows_a_page_and_adds_nothing(dsn: str, db: Database) -> None:
    async with rig(dsn, db, optout_cap=0) as r:
        _, [_, optout], _ = await r.send()
        _, text, _ = await r.get(optout)
        token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', text)
        assert token is not None
        async with r.session.post(
            f"{r.links}/{optout}", data={CSRF_FIELD: token.group(1)}
        ) as response:
            assert response.status == 409
            assert "送信元へ直接お問い合わせください" in await response.text()
        assert await r.listed() == []
        assert (await r.link_row(optout))["confirmed_at"] is None
        assert r.answers() == {"optout_page": 1, "optout_list_full": 1}


async def test_the_link_server_counts_its_answers_by_what_they_were(dsn: str, db: Database) -> None:
    # What an operator watches of a server facing the internet: clicks,
    # opt-outs, and the unknown codes and refusals of someone guessing.
    async with rig(dsn, db, burst=12, rate_per_s=0.01) as r:
        _, [link, optout], _ = await r.send()
        assert (await r.get(link))[0] == 302
        assert (await r.get("A" * 14))[0] == 404
        assert (await r.get("short"))[0] == 404
        assert (await r.get(optout))[0] == 200
        async with r.session.post(f"{r.links}/{optout}", data={}) as response:
            assert response.status == 403
            # The refusal's own form, with a fresh token, confirms.
            token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', await response.text())
        assert token is not None
        async with r.session.post(
            f"{r.links}/{optout}", data={CSRF_FIELD: token.group(1)}
        ) as response:
            assert response.status == 200
        r.clock.advance(timedelta(days=60).total_seconds())
        assert (await r.get(optout))[0] == 410
        # 7 requests so far of the address's 12.
        statuses = [(await r.get(link))[0] for _ in range(7)]
        assert statuses == [302] * 5 + [429] * 2
        assert r.answers() == {
            "redirect": 6,
            "unknown": 2,
            "optout_page": 1,
            "csrf_refused": 1,
            "optout_confirmed": 1,
            "expired": 1,
            "rate_limited": 2,
        }


async def test_a_reload_applies_the_link_limits_to_the_running_server(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    # An operator under a guessing attack tightens or loosens the limits
    # with SIGHUP, without dropping binds; the listener stays where it is.
    def write(rate_per_s: float, port: int) -> None:
        path.write_text(
            f'[database]\ndsn = "{dsn}"\n[http]\nhost = "127.0.0.1"\nport = 0\n'
            '[accounts.acme]\ntokens = ["acme-token"]\n'
            f'[links]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
            f'domain = "{DOMAIN}"\ncsrf_secret = "reload-csrf-secret"\n'
            f"burst = 2\nrate_per_s = {rate_per_s}\nmiss_burst = 100\n"
        )

    path = tmp_path / "carrierd.toml"
    write(0.01, 0)
    # No environment overrides: CARRIERD_DSN names the server, not this database.
    daemon = Daemon(load_config(path, env={}), drain_timeout_s=1.0)
    await daemon.start()
    try:
        assert daemon.link_server is not None
        port = daemon.link_server.port
        async with aiohttp.ClientSession() as http:

            async def statuses(n: int) -> list[int]:
                answers = []
                for _ in range(n):
                    async with http.get(f"http://127.0.0.1:{port}/{'Q' * 14}") as response:
                        answers.append(response.status)
                return answers

            assert await statuses(3) == [404, 404, 429]
            write(10_000.0, port + 1)
            await daemon.reload()
            await asyncio.sleep(0.01)  # the bucket refills at the new rate
            assert await statuses(2) == [404, 404]
            assert daemon.link_server.port == port
            assert daemon.config.links.port == 0  # kept: the listener waits for a start
    finally:
        await daemon.stop()
