"""Tab, reply window and expiry come from `Channel` alone: the domain, the room projection and
the API's declared values agree because they all read it (SPEC §1 "Room", §2 "Expired")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from inbox.entrypoints.api.schemas import ChannelName, RoomOut
from domain.channels import TABS, Channel
from domain.room import STATUSES, Room
from inbox.adapters.wire import to_wire
from projections.rooms import apply

ORG = "org-1"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def room_of(channel: Channel) -> Room:
    room = Room.open(
        org_id=ORG, channel=channel, channel_account_id="account-1", channel_account="Shop",
        contact_id="contact-1", post_id="post-1" if channel.is_comment else None,
    )
    room.receive(channel_message_id="in-1", text="hi", sent_at=T0)
    return room


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_projection_files_and_expires_a_room_as_its_channel_says(channel: Channel) -> None:
    room = room_of(channel)
    view = None
    for event in room.collect_events():
        view, _ = apply(view, to_wire(event))
    assert view is not None

    assert view.tab == channel.tab
    assert view.expires_at == channel.window_closes_at(T0)
    assert room.is_expired(T0 + timedelta(days=2)) == (view.expires_at is not None)


def test_comment_channels_never_expire_and_direct_channels_after_24_hours() -> None:
    for channel in Channel:
        expected = None if channel.is_comment else T0 + timedelta(hours=24)

        assert channel.window_closes_at(T0) == expected


def test_projection_refuses_a_room_of_an_unknown_channel() -> None:
    """A ValueError, which the projection writer dead-letters with its reason (never a guessed tab)."""
    event = to_wire(next(iter(room_of(Channel.WHATSAPP_CLOUD).collect_events())))
    event["data"]["channel"] = "telegram"

    with pytest.raises(ValueError, match="telegram"):
        apply(None, event)


def test_the_api_declares_exactly_the_domains_channels_tabs_and_statuses() -> None:
    assert get_args(ChannelName) == tuple(c.value for c in Channel)
    assert get_args(RoomOut.model_fields["tab"].annotation) == TABS
    assert get_args(RoomOut.model_fields["status"].annotation) == STATUSES
