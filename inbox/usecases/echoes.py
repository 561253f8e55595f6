"""Use case "echoes that overtake the sender": an Instagram echo of our reply is not a second message.

Instagram's Send API takes no `metadata`, so Meta's echo (`is_echo`) of a reply carries nothing of
ours, only the mid that the Send API's answer also carries — and Meta may deliver the echo before
the sender recorded that answer (`ReplyDeliveryAccepted`). Recorded at once, it would be a second
message next to the reply. So the ingest use case **parks** such an echo (table `parked_echoes`,
the echo's fact kept whole, written in the same transaction as the batch; the webhook answers 200
once it is durable) when all of these hold: the channel puts no id of ours on its echoes
(`PARKED_ECHO_CHANNELS`), no reply of the room knows its mid, and a reply of the room is in flight
(pending or unknown). Otherwise it is decided at once, as before.

`ParkedEchoes.sweep` (run by `inbox sender` every `INBOX_ECHO_SWEEP_S`, so it outlives any API
process that parked an echo) decides each parked echo again on fresh state:

- a reply of the room now has its mid (the sender recorded Meta's answer; or a status webhook
  did): it was the echo of that reply — dropped, nothing recorded (the reply is `sent` already);
- its dedup key `echo:<mid>` was recorded meanwhile (a redelivered echo recorded at once after the
  room's replies settled): dropped;
- parked longer than `hold_s` (`INBOX_ECHO_HOLD_S`, 30 s), or the room has no reply in flight any
  more: recorded as the business's own message sent outside the inbox, as any other echo (event,
  dedup key and the parked row's removal in one transaction);
- else it stays parked.

A crash anywhere leaves the parked row (nothing lost) or the recorded echo with its dedup key (the
next sweep drops the row): never both a message and a row that records it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from channels.facts import OutboundEcho
from domain.channels import Channel
from domain.errors import DomainError, NotFound
from domain.room import Room
from inbox.usecases.ports import DedupKey, EventStore, ParkedEcho

log = logging.getLogger(__name__)

# Channels whose echoes carry no id of ours (Messenger's carry `message.metadata`, see ingest).
PARKED_ECHO_CHANNELS = frozenset({Channel.INSTAGRAM})
HOLD_S = 30.0


def echo_key(channel_message_id: str) -> str:
    """The inbound dedup key of an echo."""
    return f"echo:{channel_message_id}"


def should_park(room: Room, echo: OutboundEcho) -> bool:
    """Park this echo (its room is known, it names no reply of the room) rather than record it now?"""
    return echo.channel in PARKED_ECHO_CHANNELS and echo.correlation_id is None and room.has_reply_in_flight()


def park(account_id: str, room: Room, echo: OutboundEcho) -> ParkedEcho:
    return ParkedEcho(account_id, echo.channel_message_id, str(room.id), echo_fact(echo))


def echo_fact(echo: OutboundEcho) -> dict[str, Any]:
    return {
        "channel": echo.channel.value, "channel_account": echo.channel_account, "contact_id": echo.contact_id,
        "channel_message_id": echo.channel_message_id, "text": echo.text, "sent_at": echo.sent_at.isoformat(),
        "sender_id": echo.sender_id, "kind": echo.kind, "attachments": [dict(a) for a in echo.attachments],
    }


def echo_from(fact: dict[str, Any]) -> OutboundEcho:
    return OutboundEcho(
        Channel(fact["channel"]), fact["channel_account"], fact["contact_id"], fact["channel_message_id"],
        fact["text"], datetime.fromisoformat(fact["sent_at"]), sender_id=fact["sender_id"],
        kind=fact.get("kind") or "text", attachments=tuple(fact.get("attachments") or ()),
    )


class ParkedEchoes:
    def __init__(self, store: EventStore, *, hold_s: float = HOLD_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._hold = timedelta(seconds=hold_s)
        self._clock = clock

    def sweep(self, limit: int = 100) -> dict[str, int]:
        """Decide the oldest parked echoes again; returns how many were dropped, recorded and kept.

        One echo that cannot be decided (its room gone, a value the room refuses) is recorded
        nowhere and dropped with an error in the log: it must not hold the others back.
        """
        tally = {"dropped": 0, "recorded": 0, "kept": 0}
        for parked in self._store.parked_echoes(limit):
            try:
                tally[self._decide(parked)] += 1
            except IntegrityError:
                tally["kept"] += 1  # the room changed meanwhile: decided again next time
            except DomainError as e:
                log.error("parked echo %s of room %s refused by the room, dropped: %s",
                          parked.channel_message_id, parked.room_id, e)
                self._store.save(unparked=[(parked.channel_account_id, parked.channel_message_id)])
                tally["dropped"] += 1
        return tally

    def _decide(self, parked: ParkedEcho) -> str:
        key = (parked.channel_account_id, parked.channel_message_id)
        try:
            room = self._store.get(UUID(parked.room_id))
        except NotFound:
            log.error("parked echo %s: room %s not found; dropped", parked.channel_message_id, parked.room_id)
            self._store.save(unparked=[key])
            return "dropped"
        if room.message_for_channel_id(parked.channel_message_id) is not None:
            self._store.save(unparked=[key])  # the echo of a reply the sender recorded meanwhile
            return "dropped"
        dedup = (parked.channel_account_id, echo_key(parked.channel_message_id))
        if self._store.recorded_dedup_keys([dedup]):
            self._store.save(unparked=[key])
            return "dropped"
        waited = self._clock() - (parked.parked_at or self._clock())
        if waited < self._hold and room.has_reply_in_flight():
            return "kept"
        echo = echo_from(parked.fact)
        message_id = room.record_echo(
            channel_message_id=echo.channel_message_id, text=echo.text, sent_at=echo.sent_at,
            sender_id=echo.sender_id, kind=echo.kind, attachments=echo.attachments,
        )
        self._store.save(room, dedup_keys=[DedupKey(parked.channel_account_id, dedup[1], str(room.id), message_id,
                                                    room.version)], unparked=[key])
        return "recorded"
