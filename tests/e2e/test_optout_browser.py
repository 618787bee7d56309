"""A person on a phone opts out (DOMAIN §12): a real headless Chromium, in a
phone's viewport with touch, opens the opt-out URL of a message, sees the
page, taps the button, sees it done, and the number is on the account's
list. A screenshot of each page is written to the test's tmp dir (and to
$CARRIERD_SCREENSHOT_DIR, which `make bench` sets to bench/out/links).

Needs Debian's `chromium` package (`make test` installs it when run as
root); without it the test is skipped, naming the package."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carrierd.domain.clock import FakeClock
from carrierd.http.links import start_link_server
from carrierd.store.db import Database
from tests.e2e.cdp import PACKAGES, find_browser, phone
from tests.integration.apiclient import auth, make_config, running_api

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
CODE = re.compile(r"s\.kmc\.jp/([A-Za-z0-9]{14})")


def screenshot_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path]
    extra = os.environ.get("CARRIERD_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        dirs.append(Path(extra))
    return dirs


async def test_a_phone_opens_the_optout_page_taps_the_button_and_is_listed(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip(
            f"no Chromium: install the Debian package {PACKAGES} "
            f"(apt-get install --no-install-recommends {PACKAGES}; make test does it as root)"
        )
    config = make_config(
        dsn,
        {
            "links": {
                "enabled": True,
                "domain": "s.kmc.jp",
                "csrf_secret": "browser-test-csrf-secret",
                # Plain http on 127.0.0.1 here; the proxy in front speaks https.
                "secure_cookies": False,
            }
        },
    )
    clock = FakeClock(T0)
    async with running_api(config, db, clock) as (api, session):
        server = await start_link_server(config.links, db, clock, host="127.0.0.1", port=0)
        try:
            body = {
                "messages": [
                    {"to": "090-1234-5678", "sms": {"text": "セール開催中。配信停止{{optout_url}}"}}
                ]
            }
            async with session.post(
                f"{api}/v1/messages", json=body, headers=auth("acme-token")
            ) as response:
                assert response.status == 202
            [row] = await db.call_raw("SELECT sms_text FROM messages")
            [code] = CODE.findall(row["sms_text"])
            shots = screenshot_dirs(tmp_path)
            async with phone(browser) as tab:
                await tab.open(f"http://127.0.0.1:{server.port}/{code}")
                assert await tab.text("document.title") == "配信停止のお手続き"
                assert "090-****-5678" in await tab.text("document.body.innerText")
                # Laid out for the phone: the button spans the narrow screen.
                width = await tab.text("document.getElementById('confirm').offsetWidth")
                assert 300 <= width <= 390
                for where in shots:
                    await tab.screenshot(where / "optout-1-page.png")
                assert await db.call_raw("SELECT 1 FROM optouts") == []

                await tab.tap("#confirm")
                assert await tab.text("document.title") == "配信を停止しました"
                for where in shots:
                    await tab.screenshot(where / "optout-2-done.png")

                await tab.open(f"http://127.0.0.1:{server.port}/{'Q' * 14}")
                assert await tab.text("document.title") == "リンクが見つかりません"
                for where in shots:
                    await tab.screenshot(where / "optout-3-unknown.png")
        finally:
            await server.stop()
    rows = await db.call_raw("SELECT account_id, msisdn, source FROM optouts")
    assert [(r["account_id"], r["msisdn"], r["source"]) for r in rows] == [
        ("acme", "+819012345678", "optout_url")
    ]
    assert (tmp_path / "optout-1-page.png").stat().st_size > 1000
