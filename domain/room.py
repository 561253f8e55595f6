"""The Room aggregate: one conversation between a channel account and a contact.

Public methods are commands: they check the rules of SPEC §2 and then trigger private
`@event` methods whose bodies only apply state, so replaying history never re-runs a guard.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.channels import Channel
from domain.errors import Conflict, InvalidCommand, NotAllowed
from domain.outbound import ReplyKind, ReplyWindow, decide_send, reply_window
from domain.limits import (
    MAX_ATTACHMENTS,
    MAX_HANDLE,
    MAX_KIND,
    MAX_MESSAGE_ID,
    MAX_NAME,
    MAX_PHONE,
    check_identifier,
    check_json,
    check_optional_text,
    check_text,
)
from domain.staff import Actor, Role
from domain.visibility import can_see

ROOM_NAMESPACE = uuid5(NAMESPACE_URL, "https://inbox.example/rooms")

UNASSIGNED = "unassigned"
ASSIGNED = "assigned"
RESOLVED = "resolved"
STATUSES = (UNASSIGNED, ASSIGNED, RESOLVED)

RESOLVE_REASONS = ("manual", "expired")

# sender_role of a MessageSent that echoes the business's own message sent from the channel's tools.
CHANNEL_SENDER = "channel"

# Delivery of a staff reply (issue 9): pending until Meta accepts it (sent), then the channel's
# statuses. Never backwards: a status ranked at or below the current one is ignored.
PENDING, SENT, DELIVERED, READ, FAILED = "pending", "sent", "delivered", "read", "failed"
DELIVERY_STATUSES = (PENDING, SENT, DELIVERED, READ, FAILED)
_DELIVERY_RANK = {PENDING: 0, SENT: 1, DELIVERED: 2, READ: 3}
TEMPLATE_KIND = "template"
# Inbound messages a staff reply can name as `reply_to` by our message id: the room's latest ones
# (older ones are still found by their channel message id, through the inbound dedup keys).
MAX_REPLY_TARGETS = 100
# Staff replies whose delivery is settled for good (read, failed; on comment channels, which send
# no statuses, accepted) that a room remembers: the latest ones. No later status can change an
# older one (`_moves_forward`: nothing after read or failed), so forgetting it records nothing
# differently; an echo of one is still that reply (its dedup key is recorded when the sender
# records Meta's answer, inbox/usecases/delivery.py). A `reply_to` naming one (or an inbound
# message older than MAX_REPLY_TARGETS by our id) is no longer found: 422, quote it by its
# channel message id if it is an inbound message.
# Replies still pending, sent or delivered are all kept (a later status needs them).
MAX_SETTLED_DELIVERIES = 100
# The only parts of a room's state changed in place (dicts of plain values): `Room.__copy__`.
_STATE_CHANGED_IN_PLACE = ("deliveries", "delivery_ids", "settled_deliveries", "inbound_ids")


class RoomIsResolved(Conflict):
    """Staff cannot act on a resolved room until the customer writes again."""


class WindowClosed(Conflict):
    """The channel's reply window does not allow this reply now (a template is needed)."""


def _moves_forward(current: str, new: str) -> bool:
    """sent → delivered → read, never backwards; failed only before delivery; nothing after failed."""
    if current == FAILED:
        return False
    if new == FAILED:
        return _DELIVERY_RANK[current] < _DELIVERY_RANK[DELIVERED]
    return _DELIVERY_RANK[new] > _DELIVERY_RANK[current]


def check_template(template: Any) -> dict[str, Any]:
    """A WhatsApp template reference {"name", "language", "components"}: bounded, storable."""
    if not isinstance(template, dict):
        raise InvalidCommand("template must be an object")
    unknown = set(template) - {"name", "language", "components"}
    if unknown:
        raise InvalidCommand(f"unknown template fields: {', '.join(sorted(unknown))}")
    name = template.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidCommand("a template needs a name")
    check_text(name, "template name", MAX_NAME)
    language = template.get("language")
    if isinstance(language, dict):
        language = language.get("code")
    if not isinstance(language, str) or not language.strip():
        raise InvalidCommand("a template needs a language code (e.g. 'en_US')")
    check_text(language, "template language", MAX_KIND)
    components = template.get("components", [])
    if components is None:
        components = []
    if not isinstance(components, list):
        raise InvalidCommand("template components must be a list")
    check_json(components, "template components")
    return {"type": TEMPLATE_KIND, "name": name, "language": language, "components": components}


class Room(Aggregate):
    # Snapshots (every SNAPSHOT_INTERVAL events) keep the state's shape: v2 added `inbound_ids`,
    # v3 `settled_deliveries`.
    class_version = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot taken before rooms kept their inbound message ids (and, earlier, deliveries):
        it starts with none; a `reply_to` of an older message is found by its channel message id."""
        state.setdefault("inbound_ids", {})
        state.setdefault("deliveries", {})
        state.setdefault("delivery_ids", {})

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """The replies settled for good, in the order the room knew them (trimmed on the next one)."""
        final = (READ, FAILED, SENT) if Channel(state["channel"]).is_comment else (READ, FAILED)
        state.setdefault("settled_deliveries", {
            m: None for m, status in state.get("deliveries", {}).items() if status in final
        })

    # ---- identity -------------------------------------------------------------------------
    @staticmethod
    def create_id(
        org_id: str, channel_account_id: str, contact_id: str, post_id: str | None = None
    ) -> UUID:
        """The same (org, account, contact[, post]) always finds the same room."""
        return room_id_for(org_id, channel_account_id, contact_id, post_id)

    # ---- events ---------------------------------------------------------------------------
    # Every event names its room's org (`org_id`), so a reader of one event (the relay, a
    # downstream team) never looks it up. Events stored before that carried it only in
    # RoomOpened; `inbox migrate` stamps those with their room's org (see
    # inbox/adapters/eventstore.py `stamp_org_ids`) and the `upcast_*` below bring them to this shape.
    class RoomOpened(Aggregate.Created):
        org_id: str
        channel: str
        channel_account_id: str
        channel_account: str
        contact_id: str
        contact_name: str | None
        contact_phone: str | None
        contact_handle: str | None
        post_id: str | None

    class MessageReceived(Aggregate.Event):
        class_version = 3
        org_id: str  # (v3)
        message_id: str
        channel_message_id: str
        text: str
        sent_at: datetime
        contact_name: str | None
        kind: str  # "text", "image", "reaction", ... (v2)
        attachments: list[dict[str, Any]]  # small metadata dicts about the content (v2)

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["kind"] = "text"
            state["attachments"] = []

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            _require_org_id(state)

    class MessageSent(Aggregate.Event):
        class_version = 4
        org_id: str  # (v3)
        message_id: str
        text: str
        sent_at: datetime
        sender_id: str
        sender_role: str  # a staff role, or "channel" for an echo of the business's own message
        sender_name: str | None
        channel_message_id: str | None
        kind: str  # (v2)
        attachments: list[dict[str, Any]]  # (v2)
        # (v4) The message a staff reply answers: {"message_id", "channel_message_id"} (our id and
        # the channel's, e.g. the wamid WhatsApp quotes), or None.
        reply_to: dict[str, str] | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["kind"] = "text"
            state["attachments"] = []

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            _require_org_id(state)

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            state["reply_to"] = None

    class MessageEdited(Aggregate.Event):
        class_version = 2
        org_id: str  # (v2)
        message_id: str
        channel_message_id: str
        text: str
        edited_at: datetime

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            _require_org_id(state)

    class MessageRemoved(Aggregate.Event):
        class_version = 2
        org_id: str  # (v2)
        message_id: str
        channel_message_id: str
        removed_at: datetime

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            _require_org_id(state)

    class RoomAssigned(Aggregate.Event):
        class_version = 2
        org_id: str  # (v2)
        assignee: str
        previous_assignee: str | None
        assigned_by: str
        by_role: str
        reason: str  # "assigned" | "taken" | "replied"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            _require_org_id(state)

    class RoomResolved(Aggregate.Event):
        class_version = 2
        org_id: str  # (v2)
        reason: str  # "manual" | "expired"
        resolved_by: str
        by_role: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            _require_org_id(state)

    class RoomReopened(Aggregate.Event):
        class_version = 2
        org_id: str  # (v2)
        reason: str  # "inbound_message"

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            _require_org_id(state)

    # ---- outbound delivery (issue 9): the sender's outcomes and the channel's statuses --------
    class ReplyDeliveryAccepted(Aggregate.Event):
        """Meta accepted a staff reply: `channel_message_id` is its wamid / mid / comment id."""

        org_id: str
        message_id: str
        channel_message_id: str
        accepted_at: datetime

    class ReplyDeliveryFailed(Aggregate.Event):
        """Meta refused a staff reply (or the sender could not send it): never retried."""

        org_id: str
        message_id: str
        code: int | None
        title: str
        permanent: bool
        failed_at: datetime

    class ReplyDeliveryUnknown(Aggregate.Event):
        """The request left and no answer came: reconciled from status/echo webhooks before any resend."""

        org_id: str
        message_id: str
        reason: str
        at: datetime

    class DeliveryStatusChanged(Aggregate.Event):
        """The channel's status of a reply we sent (sent → delivered → read, or failed)."""

        org_id: str
        message_id: str
        channel_message_id: str
        status: str
        at: datetime
        error: dict[str, Any] | None

    # ---- creation -------------------------------------------------------------------------
    @event(RoomOpened)
    def __init__(
        self,
        org_id: str,
        channel: str,
        channel_account_id: str,
        channel_account: str,
        contact_id: str,
        contact_name: str | None = None,
        contact_phone: str | None = None,
        contact_handle: str | None = None,
        post_id: str | None = None,
    ) -> None:
        self.org_id = org_id
        self.channel = channel
        self.channel_account_id = channel_account_id
        self.channel_account = channel_account
        self.contact_id = contact_id
        self.contact_name = contact_name
        self.contact_phone = contact_phone
        self.contact_handle = contact_handle
        self.post_id = post_id
        self.status = UNASSIGNED
        self.assignee: str | None = None
        self.last_direction: str | None = None
        self.last_inbound_at: datetime | None = None
        self.last_inbound_channel_message_id: str | None = None
        self.message_count = 0
        # Staff replies' delivery: message id -> status; channel message id -> message id.
        self.deliveries: dict[str, str] = {}
        self.delivery_ids: dict[str, str] = {}
        # The latest MAX_SETTLED_DELIVERIES replies settled for good, oldest first (an ordered set).
        self.settled_deliveries: dict[str, None] = {}
        # The latest MAX_REPLY_TARGETS inbound messages: our id -> channel message id (reply_to).
        self.inbound_ids: dict[str, str] = {}

    @classmethod
    def open(
        cls,
        *,
        org_id: str,
        channel: Channel,
        channel_account_id: str,
        channel_account: str,
        contact_id: str,
        contact_name: str | None = None,
        contact_phone: str | None = None,
        contact_handle: str | None = None,
        post_id: str | None = None,
    ) -> Room:
        check_contact(contact_id, contact_name, contact_phone, contact_handle)
        if post_id is not None:
            check_identifier(post_id, "post_id")
        if channel.is_comment and not post_id:
            raise InvalidCommand(f"{channel.value} messages need a post_id")
        if not channel.is_comment and post_id:
            raise InvalidCommand(f"{channel.value} is a direct-message channel; post_id is not allowed")
        return cls(
            org_id=org_id,
            channel=channel.value,
            channel_account_id=channel_account_id,
            channel_account=channel_account,
            contact_id=contact_id,
            contact_name=contact_name,
            contact_phone=contact_phone,
            contact_handle=contact_handle,
            post_id=post_id,
        )

    # ---- commands -------------------------------------------------------------------------
    def receive(
        self,
        *,
        channel_message_id: str,
        text: str,
        sent_at: datetime,
        contact_name: str | None = None,
        kind: str = "text",
        attachments: Sequence[dict[str, Any]] = (),
    ) -> str:
        """Record an inbound message; a resolved room reopens as unassigned first."""
        _check_message(channel_message_id, sent_at, "sent_at")
        check_text(text, "text")
        check_optional_text(contact_name, "contact name", MAX_NAME)
        check_content(kind, attachments)
        if self.status == RESOLVED:
            self._reopen(reason="inbound_message")
        message_id = inbound_message_id(self.id, channel_message_id)
        # The event `self._receive(...)` triggers, without the @event decorator's argument
        # plumbing (a bound decorator object, defaults and a filter per call): a quarter of the
        # cost of recording a message. Every argument is given, so the event is the same.
        self.trigger_event(
            self.MessageReceived,
            message_id=message_id,
            channel_message_id=channel_message_id,
            text=text,
            sent_at=sent_at,
            contact_name=contact_name,
            kind=kind,
            attachments=[dict(a) for a in attachments],
        )
        return message_id

    def record_echo(
        self,
        *,
        channel_message_id: str,
        text: str,
        sent_at: datetime,
        sender_id: str,
        kind: str = "text",
        attachments: Sequence[dict[str, Any]] = (),
    ) -> str:
        """The business's own message, sent from the channel's tools: never assigns the room or reopens it."""
        _check_message(channel_message_id, sent_at, "sent_at")
        check_identifier(sender_id, "sender id")
        check_text(text, "text")
        check_content(kind, attachments)
        message_id = echo_message_id(self.id, channel_message_id)
        self._send(
            message_id=message_id,
            text=text,
            sent_at=sent_at,
            sender_id=sender_id,
            sender_role=CHANNEL_SENDER,
            sender_name=None,
            channel_message_id=channel_message_id,
            kind=kind,
            attachments=[dict(a) for a in attachments],
            reply_to=None,
        )
        return message_id

    def edit_message(self, *, message_id: str, channel_message_id: str, text: str, edited_at: datetime) -> None:
        """The customer edited a message of this room (the caller knows the message was recorded)."""
        _check_message(message_id and channel_message_id, edited_at, "edited_at")
        check_text(text, "text")
        self._edit(message_id=message_id, channel_message_id=channel_message_id, text=text, edited_at=edited_at)

    def remove_message(self, *, message_id: str, channel_message_id: str, removed_at: datetime) -> None:
        """The customer removed a message of this room; its history keeps it, marked removed."""
        _check_message(message_id and channel_message_id, removed_at, "removed_at")
        self._remove(message_id=message_id, channel_message_id=channel_message_id, removed_at=removed_at)

    def reply(
        self,
        actor: Actor,
        *,
        message_id: str,
        text: str | None,
        sent_at: datetime,
        template: dict[str, Any] | None = None,
        reply_to: tuple[str, str] | None = None,
    ) -> None:
        """A staff reply (a text, or a WhatsApp template); replying to an unassigned room assigns it.

        The channel's window decides what may be sent now (domain.outbound.decide_send): a free-form
        reply after the window has closed is refused with a message saying a template is needed.
        `reply_to`: (our message id, channel message id) of the message of this room it answers,
        as `reply_target` (or the inbound dedup keys) found it.
        """
        if not actor.role.is_staff:
            raise NotAllowed(f"role {actor.role.value!r} cannot reply to customers")
        check_identifier(actor.user_id, "user id")
        check_optional_text(actor.name, "user name", MAX_NAME)
        if (text is None) == (template is None):
            raise InvalidCommand("a reply has either a text or a template")
        if template is not None:
            kind, attachments, text = TEMPLATE_KIND, [check_template(template)], str(template["name"])
        else:
            assert text is not None
            check_text(text, "text")
            if not text.strip():
                raise InvalidCommand("reply text must not be empty")
            kind, attachments = "text", []
        self._check_not_resolved()
        if self.status == ASSIGNED and self.assignee != actor.user_id and not actor.role.manages_rooms:
            raise NotAllowed("this room is assigned to another agent")
        decision = decide_send(
            Channel(self.channel), self.last_inbound_at, sent_at,
            ReplyKind.TEMPLATE if template is not None else ReplyKind.FREE_FORM,
        )
        if not decision.allowed:
            raise WindowClosed(decision.reason or "this reply cannot be sent now")
        if reply_to is not None:
            check_identifier(reply_to[0], "reply_to message id", MAX_MESSAGE_ID)
            check_identifier(reply_to[1], "reply_to channel message id", MAX_MESSAGE_ID)
        if self.status == UNASSIGNED:
            self._assign(
                assignee=actor.user_id,
                previous_assignee=None,
                assigned_by=actor.user_id,
                by_role=actor.role.value,
                reason="replied",
            )
        self._send(
            message_id=message_id,
            text=text,
            sent_at=sent_at,
            sender_id=actor.user_id,
            sender_role=actor.role.value,
            sender_name=actor.name,
            channel_message_id=None,
            kind=kind,
            attachments=attachments,
            reply_to=None if reply_to is None else {"message_id": reply_to[0], "channel_message_id": reply_to[1]},
        )

    def reply_target(self, ref: str) -> tuple[str, str] | None:
        """(our message id, channel message id) of the message of this room `ref` names, by either
        id: one of the latest MAX_REPLY_TARGETS inbound messages, or a staff reply the channel
        accepted. None when the room does not know it (the caller may still find an older inbound
        message by its channel message id). A staff reply not yet accepted has no channel id to quote."""
        if ref in self.inbound_ids:
            return ref, self.inbound_ids[ref]
        if ref in self.delivery_ids:
            return self.delivery_ids[ref], ref
        for message_id, channel_message_id in self.inbound_ids.items():
            if channel_message_id == ref:
                return message_id, ref
        if ref in self.deliveries:
            found = next((c for c, m in self.delivery_ids.items() if m == ref), None)
            if found is None:
                raise InvalidCommand(
                    f"reply_to {ref!r} is a reply that has not reached the channel yet: there is no channel message to quote"
                )
            return ref, found
        return None

    # ---- delivery outcomes (the sender) and statuses (the channel's webhooks) ---------------
    def delivery_status(self, message_id: str) -> str | None:
        """The delivery status of a staff reply of this room, None for any other message."""
        return self.deliveries.get(message_id)

    def has_reply_in_flight(self) -> bool:
        """A staff reply of this room is still pending (queued, being sent, or its outcome unknown)."""
        return any(status == PENDING for status in self.deliveries.values())

    def message_for_channel_id(self, channel_message_id: str) -> str | None:
        """Our message id of a reply Meta accepted with this wamid / mid / comment id."""
        return self.delivery_ids.get(channel_message_id)

    def record_delivery_accepted(self, *, message_id: str, channel_message_id: str, at: datetime) -> bool:
        """Meta accepted the reply; False (nothing recorded) when it was recorded as accepted already."""
        self._check_reply(message_id)
        check_identifier(channel_message_id, "channel message id", MAX_MESSAGE_ID)
        if self.delivery_ids.get(channel_message_id) == message_id:
            return False
        if self.deliveries[message_id] != PENDING:
            return False  # a status webhook settled it first, or it failed: keep what was recorded
        self._delivery_accepted(message_id=message_id, channel_message_id=channel_message_id, accepted_at=at)
        return True

    def record_delivery_failed(
        self, *, message_id: str, code: int | None, title: str, permanent: bool, at: datetime
    ) -> bool:
        self._check_reply(message_id)
        check_text(title, "title", MAX_NAME)
        if self.deliveries[message_id] != PENDING:
            return False
        self._delivery_failed(message_id=message_id, code=code, title=title, permanent=permanent, failed_at=at)
        return True

    def record_delivery_unknown(self, *, message_id: str, reason: str, at: datetime) -> bool:
        self._check_reply(message_id)
        check_text(reason, "reason", MAX_NAME)
        if self.deliveries[message_id] != PENDING:
            return False
        self._delivery_unknown(message_id=message_id, reason=reason, at=at)
        return True

    def record_delivery_status(
        self,
        *,
        channel_message_id: str,
        status: str,
        at: datetime,
        error: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> bool:
        """A channel status for a reply we sent. `message_id` (our correlation id, e.g. WhatsApp's
        biz_opaque_callback_data) settles a reply whose outcome was unknown. Never backwards:
        returns False, recording nothing, for a status at or below the current one or a message we
        did not send."""
        if status not in (SENT, DELIVERED, READ, FAILED):
            raise InvalidCommand(f"unknown delivery status {status!r}")
        if at.tzinfo is None:
            raise InvalidCommand("status time must carry a timezone")
        check_identifier(channel_message_id, "channel message id", MAX_MESSAGE_ID)
        if error is not None:
            check_json(error, "status error")
        target = self.delivery_ids.get(channel_message_id)
        if target is None and message_id is not None and message_id in self.deliveries:
            target = message_id  # an unknown outcome, settled by the correlation id
        if target is None:
            return False
        if not _moves_forward(self.deliveries[target], status):
            return False
        self._delivery_status(message_id=target, channel_message_id=channel_message_id, status=status, at=at,
                              error=error)
        return True

    def _check_reply(self, message_id: str) -> None:
        if message_id not in self.deliveries:
            raise InvalidCommand(f"message {message_id!r} is not a staff reply of this room")

    def assign(self, actor: Actor, *, agent_id: str) -> bool:
        """Admin/SPV assign anyone; an agent may only take an unassigned room for itself.

        Returns False (and records nothing) when the room is already with that agent.
        """
        check_identifier(agent_id, "agent_id")
        check_identifier(actor.user_id, "user id")
        if not actor.role.is_staff:
            raise NotAllowed(f"role {actor.role.value!r} cannot assign rooms")
        self._check_not_resolved()
        if actor.role == Role.AGENT:
            if agent_id != actor.user_id:
                raise NotAllowed("an agent may only take a room for itself")
            if self.status == ASSIGNED and self.assignee != actor.user_id:
                raise NotAllowed("this room is assigned to another agent")
        if self.status == ASSIGNED and self.assignee == agent_id:
            return False
        self._assign(
            assignee=agent_id,
            previous_assignee=self.assignee,
            assigned_by=actor.user_id,
            by_role=actor.role.value,
            reason="taken" if agent_id == actor.user_id else "assigned",
        )
        return True

    def resolve(self, actor: Actor, *, reason: str = "manual") -> None:
        """Closed by the assignee, a supervisor or an admin."""
        if reason not in RESOLVE_REASONS:
            raise InvalidCommand(f"unknown resolve reason {reason!r}")
        if not actor.role.is_staff:
            raise NotAllowed(f"role {actor.role.value!r} cannot resolve rooms")
        if not actor.role.manages_rooms and self.assignee != actor.user_id:
            raise NotAllowed("only the assignee, a supervisor or an admin can resolve this room")
        if reason == "expired":
            check_may_resolve_expired(actor)
        self._check_not_resolved()
        self._resolve(reason=reason, resolved_by=actor.user_id, by_role=actor.role.value)

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        """Every event after RoomOpened is stamped with the room's org."""
        super().trigger_event(event_class, org_id=self.org_id, **kwargs)

    def __copy__(self) -> Room:
        """An independent copy: events applied to either leave the other as it is.

        A room's state is plain values (replaced, never changed in place) and the dicts of
        `_STATE_CHANGED_IN_PLACE` (of plain values), so copying those dicts is enough; much
        cheaper than folding the room again from the store."""
        twin = object.__new__(type(self))
        state = dict(self.__dict__)
        for name in _STATE_CHANGED_IN_PLACE:
            state[name] = dict(state[name])
        state["_pending_events"] = list(state["_pending_events"])
        twin.__dict__.update(state)
        return twin

    # ---- queries on state -----------------------------------------------------------------
    def reply_window(self) -> ReplyWindow:
        """What staff can send now (SPEC: the room's `reply_window`)."""
        return reply_window(Channel(self.channel), self.last_inbound_at)

    @property
    def awaiting_reply(self) -> bool:
        return self.status != RESOLVED and self.last_direction == "inbound"

    def is_expired(self, now: datetime) -> bool:
        """SPEC §2: not resolved, a direct-message room, its last inbound message older than the window."""
        return has_expired(self.status, Channel(self.channel).window_closes_at(self.last_inbound_at), now)

    def is_visible_to(self, actor: Actor) -> bool:
        return can_see(actor, self.org_id, self.assignee)

    def _check_not_resolved(self) -> None:
        if self.status == RESOLVED:
            raise RoomIsResolved("the room is resolved; it reopens when the customer writes again")

    # ---- state changes (applied on command and on replay) ----------------------------------
    @event(MessageReceived)
    def _receive(
        self,
        message_id: str,
        channel_message_id: str,
        text: str,
        sent_at: datetime,
        contact_name: str | None,
        kind: str,
        attachments: list[dict[str, Any]],
    ) -> None:
        if contact_name:
            self.contact_name = contact_name
        self.last_direction = "inbound"
        if self.last_inbound_at is None or sent_at > self.last_inbound_at:
            self.last_inbound_at = sent_at
            self.last_inbound_channel_message_id = channel_message_id
        self.message_count += 1
        self.inbound_ids[message_id] = channel_message_id
        while len(self.inbound_ids) > MAX_REPLY_TARGETS:  # `while`: older snapshots kept up to 1000
            del self.inbound_ids[next(iter(self.inbound_ids))]

    @event(MessageSent)
    def _send(
        self,
        message_id: str,
        text: str,
        sent_at: datetime,
        sender_id: str,
        sender_role: str,
        sender_name: str | None,
        channel_message_id: str | None,
        kind: str,
        attachments: list[dict[str, Any]],
        reply_to: dict[str, str] | None,
    ) -> None:
        self.last_direction = "outbound"
        self.message_count += 1
        if sender_role != CHANNEL_SENDER:
            self.deliveries[message_id] = PENDING

    @event(ReplyDeliveryAccepted)
    def _delivery_accepted(self, message_id: str, channel_message_id: str, accepted_at: datetime) -> None:
        self.deliveries[message_id] = SENT
        self.delivery_ids[channel_message_id] = message_id
        if Channel(self.channel).is_comment:
            self._settled(message_id)  # comments get no statuses: accepted is as far as they go

    @event(ReplyDeliveryFailed)
    def _delivery_failed(
        self, message_id: str, code: int | None, title: str, permanent: bool, failed_at: datetime
    ) -> None:
        self.deliveries[message_id] = FAILED
        self._settled(message_id)

    @event(ReplyDeliveryUnknown)
    def _delivery_unknown(self, message_id: str, reason: str, at: datetime) -> None:
        pass  # still pending: a status/echo webhook or the sender's reconciliation settles it

    @event(DeliveryStatusChanged)
    def _delivery_status(
        self, message_id: str, channel_message_id: str, status: str, at: datetime, error: dict[str, Any] | None
    ) -> None:
        self.deliveries[message_id] = status
        self.delivery_ids[channel_message_id] = message_id
        if status in (READ, FAILED):
            self._settled(message_id)

    def _settled(self, message_id: str) -> None:
        """Remember a reply settled for good; forget the oldest beyond MAX_SETTLED_DELIVERIES."""
        self.settled_deliveries.pop(message_id, None)
        self.settled_deliveries[message_id] = None
        while len(self.settled_deliveries) > MAX_SETTLED_DELIVERIES:
            oldest = next(iter(self.settled_deliveries))
            del self.settled_deliveries[oldest]
            self.deliveries.pop(oldest, None)
            for channel_message_id in [c for c, m in self.delivery_ids.items() if m == oldest]:
                del self.delivery_ids[channel_message_id]

    @event(MessageEdited)
    def _edit(self, message_id: str, channel_message_id: str, text: str, edited_at: datetime) -> None:
        pass  # the read models keep message texts; the room's own state does not change

    @event(MessageRemoved)
    def _remove(self, message_id: str, channel_message_id: str, removed_at: datetime) -> None:
        pass  # likewise: status, assignee and awaiting-reply are unchanged by a removal

    @event(RoomAssigned)
    def _assign(
        self, assignee: str, previous_assignee: str | None, assigned_by: str, by_role: str, reason: str
    ) -> None:
        self.status = ASSIGNED
        self.assignee = assignee

    @event(RoomResolved)
    def _resolve(self, reason: str, resolved_by: str, by_role: str) -> None:
        self.status = RESOLVED
        self.resolved_by = resolved_by

    @event(RoomReopened)
    def _reopen(self, reason: str) -> None:
        self.status = UNASSIGNED
        self.assignee = None


def has_expired(status: str, expires_at: datetime | None, now: datetime) -> bool:
    """SPEC §2 "Expired": not resolved and its reply window (Channel.window_closes_at) has closed."""
    return status != RESOLVED and expires_at is not None and expires_at <= now


def has_expired_sql(alias: str = "r", now: str = "now()") -> str:
    """`has_expired` as SQL over the room projection's `status` and `expires_at`; `now` is SQL text."""
    return f"{alias}.status <> '{RESOLVED}' AND {alias}.expires_at IS NOT NULL AND {alias}.expires_at <= {now}"


def check_may_resolve_expired(actor: Actor) -> None:
    """SPEC §3: only supervisors and admins resolve rooms as expired (one by one or all at once)."""
    if not actor.role.manages_rooms:
        raise NotAllowed("only supervisors and admins resolve expired rooms")


@functools.lru_cache(maxsize=16384)  # a uuid5 (SHA-1) per inbound fact otherwise
def room_id_for(org_id: str, channel_account_id: str, contact_id: str, post_id: str | None = None) -> UUID:
    return uuid5(ROOM_NAMESPACE, "|".join((org_id, channel_account_id, contact_id, post_id or "")))


def inbound_message_id(room_id: UUID, channel_message_id: str) -> str:
    """Stable id of an inbound message: the same channel message always gets the same id."""
    return uuid5_text(room_id, f"in:{channel_message_id}")


def echo_message_id(room_id: UUID, channel_message_id: str) -> str:
    """Stable id of an echoed outbound message (the business's own, sent from the channel's tools)."""
    return uuid5_text(room_id, f"out:{channel_message_id}")


def uuid5_text(namespace: UUID, name: str) -> str:
    """`str(uuid5(namespace, name))` without building the UUID object (a third of the cost of
    recording a message's id): SHA-1 of the namespace and the name, version 5, RFC 4122 variant."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8"), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_contact(
    contact_id: str, name: str | None = None, phone: str | None = None, handle: str | None = None
) -> None:
    """The contact fields a room keeps: a valid id and bounded, storable texts."""
    check_identifier(contact_id, "contact id")
    check_optional_text(name, "contact name", MAX_NAME)
    check_optional_text(phone, "contact phone", MAX_PHONE)
    check_optional_text(handle, "contact handle", MAX_HANDLE)


class EventWithoutOrg(ValueError):
    """A room event stored before events carried `org_id`, not yet stamped by `inbox migrate`."""


def _require_org_id(state: dict[str, Any]) -> None:
    """Upcast of a room event stored before events carried `org_id`.

    One event alone cannot know its room's org (only RoomOpened named it), so `inbox migrate`
    stamps the stored state with it; an event it has not stamped is refused loudly rather than
    published without an org.
    """
    if not state.get("org_id"):
        raise EventWithoutOrg(
            f"room event {state.get('originator_id')} v{state.get('originator_version')} has no org_id;"
            " run `inbox migrate` to stamp events stored before events carried it"
        )


def _check_message(message_id: str, moment: datetime, name: str) -> None:
    if not message_id:
        raise InvalidCommand("message id is required")
    check_identifier(message_id, "message id", MAX_MESSAGE_ID)
    if moment.tzinfo is None:
        raise InvalidCommand(f"{name} must carry a timezone")


def check_content(kind: str, attachments: Sequence[dict[str, Any]]) -> None:
    if not kind or not kind.strip():
        raise InvalidCommand("message kind is required")
    check_text(kind, "message kind", MAX_KIND)
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidCommand(f"a message carries at most {MAX_ATTACHMENTS} attachments")
    if any(not isinstance(a, dict) for a in attachments):
        raise InvalidCommand("attachments must be objects")
    for a in attachments:
        check_json(a, "attachment")
