"""The engine on a fake clock: real PostgreSQL, the real dispatcher, recorder
and settler; the carriers' network replaced by `NetworkStandIn`, which
answers submits at once in fake time (a live carrier network cannot exist
here; the SMPP path itself is tested against the simulator elsewhere)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carrierd.channels.types import PartOutcome, Receipt, SmsGateway, SmsRequest
from carrierd.config import Config, parse_config
from carrierd.domain.clock import FakeClock
from carrierd.engine.dispatcher import Dispatcher
from carrierd.engine.inbound import Inbound
from carrierd.engine.leases import Leases, lease_owner_for
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.send_replies import SendReplies
from carrierd.engine.sms_leg import SmsLeg
from carrierd.engine.timers import Timers
from carrierd.engine.write_behind import WriteBehind
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import sync_accounts

_SMSC_IDS = itertools.count(1)


@dataclass
class Submitted:
    at: datetime
    carrier: str
    request: SmsRequest
    smsc_ids: list[str]


@dataclass
class NetworkStandIn:
    """Answers every part at once. `subscribers` maps a number to its real
    carrier; a submit to another carrier is refused with that carrier's
    "not our subscriber" status (0x0B unless configured otherwise)."""

    clock: FakeClock
    carrier_names: Collection[str]
    subscribers: Mapping[str, str] = field(default_factory=dict)
    wrong_carrier_status: int = 0x0000000B
    submitted: list[Submitted] = field(default_factory=list)
    backlogged: bool = False  # what receipts_backlogged says
    # Unique across stand-ins, as tests may run several against one database.
    _ids: itertools.count[int] = field(default_factory=lambda: _SMSC_IDS)
    # Part 1 sent alone, by (message, attempt, carrier): its rest joins it.
    _part_one: dict[tuple[int, int, str], Submitted] = field(default_factory=dict)

    def carriers(self) -> Collection[str]:
        return self.carrier_names

    def next_ids_from(self, first: int) -> None:
        """Tests that must know the next SMSC message id in advance."""
        self._ids = itertools.count(first)

    def is_available(self, carrier: str, route: str = "premium") -> bool:
        return carrier in self.carrier_names

    def receipts_backlogged(self) -> bool:
        return self.backlogged

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        owner = self.subscribers.get(request.msisdn, carrier)
        if owner != carrier:
            return [
                PartOutcome(
                    n,
                    "refused",
                    command_status=self.wrong_carrier_status,
                    bind_id=f"{carrier}-1",
                )
                for n in request.numbers()
            ]
        ids = [f"{next(self._ids)}" for _ in request.numbers()]
        key = (request.message_id, request.attempt, carrier)
        earlier = self._part_one.pop(key, None) if request.numbers()[0] > 1 else None
        if earlier is not None:
            # The parts that followed an accepted part 1: one record per
            # attempt, as if they had gone together.
            earlier.smsc_ids.extend(ids)
            return self._accepted(carrier, request, ids)
        self.submitted.append(Submitted(self.clock.now(), carrier, request, ids))
        if request.part_numbers == (1,):
            self._part_one[key] = self.submitted[-1]
        return self._accepted(carrier, request, ids)

    @staticmethod
    def _accepted(carrier: str, request: SmsRequest, ids: list[str]) -> list[PartOutcome]:
        return [
            PartOutcome(
                n, "accepted", smsc_message_id=sid, command_status=0, bind_id=f"{carrier}-1"
            )
            for n, sid in zip(request.numbers(), ids, strict=True)
        ]


def engine_config(dsn: str, extra: Mapping[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = {
        "database": {"dsn": dsn},
        "accounts": {
            "acme": {
                "tokens": ["acme-token"],
                "senders": {"docomo": "0120111111", "au": "0120111111"},
            },
            "globex": {"tokens": ["globex-token"]},
        },
        "carriers": {name: {"port": 1} for name in ("docomo", "au", "softbank", "rakuten")},
        "engine": {"claim_batch": 500},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    # Required by the config (no default SMSC, no empty sender); the network
    # stand-in never connects, and a test cares about a sender only when it
    # names one.
    raw["carriers"] = {
        name: {"host": "127.0.0.1", **carrier} for name, carrier in raw["carriers"].items()
    }
    raw["accounts"] = {
        account_id: {
            **account,
            "senders": {
                **{name: "0120111111" for name in raw["carriers"]},
                **account.get("senders", {}),
            },
        }
        for account_id, account in raw["accounts"].items()
    }
    return parse_config(raw, env={})


@dataclass
class Engine:
    config: Config
    db: Database
    clock: FakeClock
    network: NetworkStandIn
    recorder: WriteBehind
    dispatcher: Dispatcher
    settler: Timers
    lifecycle: Lifecycle
    inbound: Inbound
    metrics: Metrics

    async def cycle(self) -> int:
        """One dispatch pass, every submit answered and recorded."""
        claimed = await self.dispatcher.dispatch_once(self.clock.now())
        await self.dispatcher.wait_idle()
        await self.recorder.drain()
        return claimed

    async def receipt(
        self, carrier: str, smsc_id: str, stat: str = "DELIVRD", err: str | None = None
    ) -> None:
        self.recorder.receipt(Receipt(carrier, smsc_id, stat, err, self.clock.now()))
        await self.recorder.drain()


async def make_engine(
    config: Config,
    db: Database,
    clock: FakeClock,
    *,
    daemon_id: str = "d1",
    subscribers: Mapping[str, str] | None = None,
    network: NetworkStandIn | None = None,
    gateway: Callable[[WriteBehind], SmsGateway] | None = None,
) -> Engine:
    """The engine wired as the daemon wires it; `gateway` builds a real SMS
    gateway around the write-behind (its receipts' destination) instead of
    the stand-in."""
    await sync_accounts(db, config)
    network = network or NetworkStandIn(clock, list(config.carriers), subscribers or {})
    metrics = Metrics()
    lifecycle = Lifecycle(metrics)
    inbound = Inbound(db, config=lambda: config, hooks=[SendReplies(db, config=lambda: config)])
    recorder = WriteBehind(
        db,
        clock,
        lifecycle,
        inbound,
        accounts=lambda: config.accounts,
        carriers=lambda: config.carriers,
        au_spacing_s=lambda: config.engine.au_spacing_s,
        submitted_grace_s=lambda: config.engine.submitted_grace_s,
        metrics=metrics,
    )
    sms_gateway: SmsGateway = network if gateway is None else gateway(recorder)
    # One lease owner per engine, as per daemon process: two engines given
    # the same daemon id are two starts of one daemon.
    lease_owner = lease_owner_for(daemon_id)
    leases = Leases(db, lifecycle, config=lambda: config, lease_owner=lease_owner)
    sms_leg = SmsLeg(
        sms_gateway, recorder, lifecycle, config=lambda: config, lease_owner=lease_owner
    )
    dispatcher = Dispatcher(
        db,
        clock,
        sms_gateway,
        sms_leg,
        lifecycle,
        leases,
        config=lambda: config,
        lease_owner=lease_owner,
        metrics=metrics,
    )
    settler = Timers(db, clock, recorder, lifecycle, leases, config=lambda: config, metrics=metrics)
    settler.inbound_timers = inbound
    return Engine(
        config, db, clock, network, recorder, dispatcher, settler, lifecycle, inbound, metrics
    )


async def enqueue(
    db: Database, account: str, items: list[dict[str, Any]], now: datetime, config: Config
) -> list[int]:
    from carrierd.intake import validate_batch

    batch = validate_batch(
        {"messages": items},
        config.accounts[account],
        now,
        max_items=100_000,
        expiry_s=config.engine.message_expiry_s,
        reassign_enabled=config.reassign.enabled,
    )
    assert not batch.rejected, batch.rejected
    ids = await db.insert_messages(account, batch.rows, now)
    return [ids[i] for i in range(len(batch.rows))]
