"""The opt-out list's HTTP API (DOMAIN §12) against a real server and
PostgreSQL: adds in any spelling, all or none; the cap; lookup, removal and
cursor pages; the CSV export, and its import into another account; per-row
import errors with nothing written."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from tests.integration.apiclient import auth, make_config, running_api

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
ACME = auth("acme-token")
GLOBEX = auth("globex-token")
CSV = {"Content-Type": "text/csv"}


def config_for(dsn: str, acme: dict[str, Any] | None = None) -> Any:
    return make_config(
        dsn,
        {
            "accounts": {
                "acme": {
                    "tokens": ["acme-token"],
                    "senders": {"docomo": "0120111111"},
                    "api_tokens": [{"token": "acme-manager", "role": "manager"}],
                    **(acme or {}),
                },
                "globex": {"tokens": ["globex-token"]},
            }
        },
    )


async def listed(http: aiohttp.ClientSession, base: str, token: dict[str, str]) -> list[str]:
    async with http.get(f"{base}/v1/optouts?limit=1000", headers=token) as resp:
        assert resp.status == 200
        return [o["msisdn"] for o in (await resp.json())["optouts"]]


async def test_add_in_any_spelling_look_up_and_remove(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    async with running_api(config_for(dsn), db, clock) as (base, http):
        one = {
            "numbers": ["090-1234-5678", "+818012345678", "０７０１２３４５６７８", "09012345678"]
        }
        async with http.post(f"{base}/v1/optouts", json=one, headers=ACME) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"added": 3, "already_listed": 0}
        clock.advance(60)
        async with http.post(
            f"{base}/v1/optouts", json={"number": "+819012345678"}, headers=ACME
        ) as resp:
            assert await resp.json() == {"added": 0, "already_listed": 1}
        # Looked up in another spelling; the first add's time and source stay.
        async with http.get(f"{base}/v1/optouts/090-1234-5678", headers=ACME) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "msisdn": "+819012345678",
                "added_at": T0.isoformat(),
                "source": "api",
            }
        # Another account's list is its own.
        async with http.get(f"{base}/v1/optouts/09012345678", headers=GLOBEX) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with http.delete(f"{base}/v1/optouts/%2B819012345678", headers=ACME) as resp:
            assert resp.status == 200
            assert await resp.json() == {"msisdn": "+819012345678", "removed": True}
        async with http.delete(f"{base}/v1/optouts/09012345678", headers=ACME) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/v1/optouts/050-1234-5678", headers=ACME) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert (error["code"], error["field"]) == ("invalid_field", "number")
            assert error["message"].startswith("ip_phone")
        assert sorted(await listed(http, base, ACME)) == ["+817012345678", "+818012345678"]
        # A token without the optouts scope (manager: send, read).
        async with http.get(f"{base}/v1/optouts", headers=auth("acme-manager")) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "scope_required"


async def test_a_wrong_number_refuses_the_whole_add_naming_each(dsn: str, db: Database) -> None:
    async with running_api(config_for(dsn), db, FakeClock(T0)) as (base, http):
        body = {"numbers": ["090-1234-5678", "050-1234-5678", "0312345678", 7]}
        async with http.post(f"{base}/v1/optouts", json=body, headers=ACME) as resp:
            assert resp.status == 400
            answer = await resp.json()
        assert answer["error"]["code"] == "invalid_field"
        assert answer["error"]["field"] == "numbers[1]"
        assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
            (1, "numbers[1]"),
            (2, "numbers[2]"),
            (3, "numbers[3]"),
        ]
        assert answer["rejected"][0]["reason"].startswith("ip_phone")
        assert await listed(http, base, ACME) == []


async def test_the_cap_refuses_an_add_past_it_and_writes_nothing(dsn: str, db: Database) -> None:
    async with running_api(config_for(dsn, {"optout_cap": 3}), db, FakeClock(T0)) as (base, http):
        first = {"numbers": ["09011110001", "09011110002"]}
        async with http.post(f"{base}/v1/optouts", json=first, headers=ACME) as resp:
            assert resp.status == 200
        more = {"numbers": ["09011110002", "09011110003", "09011110004"]}
        async with http.post(f"{base}/v1/optouts", json=more, headers=ACME) as resp:
            assert resp.status == 409
            answer = await resp.json()
        assert answer["error"]["code"] == "optout_list_full"
        assert (answer["cap"], answer["listed"], answer["adding"]) == (3, 2, 2)
        async with http.post(
            f"{base}/v1/optouts/import", data="09011110003\n09011110004\n", headers={**ACME, **CSV}
        ) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["code"] == "optout_list_full"
        assert len(await listed(http, base, ACME)) == 2
        # Up to the cap is fine; numbers already listed take no room.
        async with http.post(
            f"{base}/v1/optouts", json=more | {"numbers": more["numbers"][:2]}, headers=ACME
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"added": 1, "already_listed": 1}
        # Another account has a list (and a cap, the default 10,000) of its own.
        async with http.post(f"{base}/v1/optouts", json=more, headers=GLOBEX) as resp:
            assert resp.status == 200


async def test_pages_in_the_order_numbers_were_added(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    async with running_api(config_for(dsn), db, clock) as (base, http):
        # Added in three requests; within one, by number.
        for batch in (["09010000003", "09010000001"], ["08010000009"], ["07010000005"]):
            async with http.post(
                f"{base}/v1/optouts", json={"numbers": batch}, headers=ACME
            ) as resp:
                assert resp.status == 200
            clock.advance(1)
        seen: list[str] = []
        url = f"{base}/v1/optouts?limit=2"
        while True:
            async with http.get(url, headers=ACME) as resp:
                page = await resp.json()
            assert len(page["optouts"]) <= 2
            seen += [o["msisdn"] for o in page["optouts"]]
            if page["next_cursor"] is None:
                break
            url = f"{base}/v1/optouts?limit=2&cursor={page['next_cursor']}"
        assert seen == ["+819010000001", "+819010000003", "+818010000009", "+817010000005"]
        async with http.get(f"{base}/v1/optouts?limit=0", headers=ACME) as resp:
            assert (resp.status, (await resp.json())["error"]["field"]) == (400, "limit")


async def test_an_export_imports_into_another_account_as_the_same_list(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = config_for(dsn)
    async with running_api(config, db, clock) as (base, http):
        numbers = [f"0901{n:07d}" for n in range(1, 2501)]
        async with http.post(
            f"{base}/v1/optouts", json={"numbers": numbers[:2000]}, headers=ACME
        ) as resp:
            assert resp.status == 200
        clock.advance(5)
        async with http.post(
            f"{base}/v1/optouts/import", data="\n".join(numbers[2000:]), headers={**ACME, **CSV}
        ) as resp:
            assert await resp.json() == {"added": 500, "already_listed": 0}
        async with http.get(f"{base}/v1/optouts/export", headers=ACME) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/csv"
            exported = await resp.text()
        rows = list(csv.reader(io.StringIO(exported)))
        assert rows[0] == ["msisdn", "added_at", "source"]
        assert len(rows) == 2501
        assert rows[1] == ["+819010000001", T0.isoformat(), "api"]
        assert rows[-1] == ["+819010002500", (T0 + timedelta(seconds=5)).isoformat(), "csv"]

        clock.advance(60)
        async with http.post(
            f"{base}/v1/optouts/import", data=exported, headers={**GLOBEX, **CSV}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"added": 2500, "already_listed": 0}
        async with http.get(f"{base}/v1/optouts/export", headers=GLOBEX) as resp:
            imported = list(csv.reader(io.StringIO(await resp.text())))
        assert sorted(r[0] for r in imported[1:]) == sorted(r[0] for r in rows[1:])
        assert {r[2] for r in imported[1:]} == {"csv"}


async def test_an_import_with_wrong_rows_names_each_row_and_writes_nothing(
    dsn: str, db: Database
) -> None:
    async with running_api(config_for(dsn), db, FakeClock(T0)) as (base, http):
        text = (
            "msisdn,added_at,source\r\n"  # row 1: a header
            "090-1234-5678,,\r\n"
            "050-1234-5678,,\r\n"  # row 3: an IP phone
            "\r\n"  # row 4: blank, skipped
            "+819012345679\r\n"
            "hello\r\n"  # row 6
        )
        async with http.post(
            f"{base}/v1/optouts/import", data=text, headers={**ACME, **CSV}
        ) as resp:
            assert resp.status == 400
            answer = await resp.json()
        assert answer["error"]["code"] == "invalid_field"
        assert [r["row"] for r in answer["rejected"]] == [3, 6]
        assert answer["rejected"][0]["reason"].startswith("ip_phone")
        assert "row 3" in answer["error"]["message"]
        assert await listed(http, base, ACME) == []
        async with http.post(
            f"{base}/v1/optouts/import", data=b"\xff\xfe", headers={**ACME, **CSV}
        ) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "malformed_body")
        async with http.post(
            f"{base}/v1/optouts/import", data="x", headers={**ACME, "Content-Type": "image/png"}
        ) as resp:
            assert resp.status == 415
