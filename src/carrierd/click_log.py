"""The click and open log of messages (DOMAIN §12), read for the status
view, the delivery-log export and the status callbacks alike, so all three
show the same thing: per short link its first click time and count, and
for +Message the time the message was opened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carrierd.domain.links import click_view
from carrierd.domain.status import iso_instant
from carrierd.store.db import Database, Row


@dataclass(frozen=True)
class ClickLog:
    """The log of some messages, by message id."""

    links: Mapping[int, list[Row]]
    opened: Mapping[int, datetime]

    def view(self, message_id: int) -> dict[str, Any]:
        """The keys a status document gains: "links" and "opened_at"."""
        return {
            "links": click_view(self.links.get(message_id, [])),
            "opened_at": iso_instant(self.opened.get(message_id)),
        }


async def click_log(db: Database, message_ids: Sequence[int]) -> ClickLog:
    ids = sorted(set(message_ids))
    links: dict[int, list[Row]] = {}
    for link in await db.fetch("links_of_messages", ids):
        links.setdefault(link["message_id"], []).append(link)
    opens = await db.fetch("opens_of_messages", ids)
    return ClickLog(links, {o["message_id"]: o["opened_at"] for o in opens})
