"""The read model behind tabs, ordering, search and expiry, as pure folds of the real aggregate's events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.wire import to_wire
from projections.rooms import MessageRow, RoomView, apply
from projections.text import fold, has_words, name_query, national_digits, phone_query, search_name

ORG = "org-1"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
AGENT = Actor("agent-1", ORG, Role.AGENT, "Alice")
SUPERVISOR = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")


def new_room(channel: Channel = Channel.WHATSAPP_CLOUD, *, name: str | None = "Budí Santoso",
             phone: str | None = None, handle: str | None = None, contact: str = "6281234567890") -> Room:
    return Room.open(
        org_id=ORG, channel=channel, channel_account_id="account-1", channel_account="Shop", contact_id=contact,
        contact_name=name, contact_phone=phone, contact_handle=handle,
        post_id="post-1" if channel.is_comment else None,
    )


def fold_events(events: list[dict[str, Any]], view: RoomView | None = None) -> tuple[RoomView, list[MessageRow]]:
    rows = []
    for e in events:
        view, row = apply(view, e)
        if row is not None:
            rows.append(row)
    assert view is not None
    return view, rows


def wire(room: Room) -> list[dict[str, Any]]:
    return [to_wire(e) for e in room.collect_events()]


def at(events: list[dict[str, Any]], i: int) -> datetime:
    return datetime.fromisoformat(events[i]["occurred_at"])


# ---- activity order ----------------------------------------------------------------------------
def test_messages_record_when_they_were_recorded() -> None:
    room = new_room()
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0)
    room.reply(AGENT, message_id="out-1", text="iya", sent_at=T0)
    events = wire(room)

    view, rows = fold_events(events)

    assert [r.recorded_at for r in rows] == [at(events, 1), at(events, 3)]
    assert view.updated_at == at(events, 3)


def test_assignment_resolution_and_reopening_do_not_reorder_the_room() -> None:
    room = new_room()
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0)
    view, _ = fold_events(wire(room))
    activity = view.updated_at

    room.assign(SUPERVISOR, agent_id="agent-9")
    room.resolve(SUPERVISOR)
    view, _ = fold_events(wire(room), view)

    assert view.status == "resolved" and view.updated_at == activity


def test_a_new_inbound_message_moves_a_resolved_room_up_as_it_reopens() -> None:
    room = new_room()
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0)
    room.resolve(SUPERVISOR)
    view, _ = fold_events(wire(room))

    room.receive(channel_message_id="in-2", text="lagi", sent_at=T0 + timedelta(days=1))
    events = wire(room)
    view, _ = fold_events(events, view)

    assert view.status == "unassigned" and view.updated_at == at(events, -1)


# ---- search columns ----------------------------------------------------------------------------
def test_search_name_is_folded_name_and_handle() -> None:
    view, _ = fold_events(wire(new_room(Channel.INSTAGRAM, name="Budí  SANTOSO", handle="@Budi.Shop", contact="igsid-1")))

    assert view.search_name == "budi santoso budi.shop"


def test_search_name_follows_a_renamed_contact() -> None:
    room = new_room(name=None)
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0, contact_name="Siti Ñurhaliza")

    view, _ = fold_events(wire(room))

    assert view.search_name == "siti nurhaliza"


def test_whatsapp_contact_id_is_the_searchable_phone_number() -> None:
    view, _ = fold_events(wire(new_room(contact="6281234567890")))

    assert view.phone_digits == "81234567890"


def test_given_phone_wins_and_other_channels_without_one_have_none() -> None:
    with_phone, _ = fold_events(wire(new_room(Channel.FACEBOOK_MESSENGER, contact="psid-1", phone="0812-3456-7890")))
    without, _ = fold_events(wire(new_room(Channel.FACEBOOK_MESSENGER, contact="1234567")))

    assert with_phone.phone_digits == "81234567890"
    assert without.phone_digits is None


@pytest.mark.parametrize("spelling", ["+62 812-3456-7890", "0812 3456 7890", "6281234567890", "(0812) 3456.7890",
                                      "0062 812 3456 7890", "81234567890"])
def test_every_common_spelling_of_a_number_normalizes_alike(spelling: str) -> None:
    assert national_digits(spelling) == "81234567890"


def test_fold_strips_accents_and_case() -> None:
    assert fold("  Ágüstína   DEWÍ ") == "agustina dewi"
    assert search_name(None, None) is None


def test_name_query_drops_a_handles_at_sign() -> None:
    assert name_query(" @Budi.Shop ") == "budi.shop"


def test_phone_query_only_for_phone_like_text_with_enough_digits() -> None:
    assert phone_query("+62 812-3456") == "8123456"
    assert phone_query("0812") == "812"
    assert phone_query("budi 0812") is None
    assert phone_query("08") is None


def test_search_text_needs_letters_or_digits() -> None:
    assert has_words("INV-2041") and has_words("Ñ") and has_words("@budi")
    assert not has_words("!!! ") and not has_words("___")


# ---- expiry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", [Channel.WHATSAPP_CLOUD, Channel.INSTAGRAM, Channel.FACEBOOK_MESSENGER])
def test_direct_message_room_is_expired_24h_after_the_last_inbound_channel_timestamp(channel: Channel) -> None:
    room = new_room(channel)
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0)

    assert not room.is_expired(T0 + timedelta(hours=24) - timedelta(seconds=1))
    assert room.is_expired(T0 + timedelta(hours=24))


@pytest.mark.parametrize("channel", [Channel.INSTAGRAM_COMMENT, Channel.FACEBOOK_COMMENT])
def test_comment_room_never_expires(channel: Channel) -> None:
    room = new_room(channel)
    room.receive(channel_message_id="c-1", text="harga?", sent_at=T0)

    assert not room.is_expired(T0 + timedelta(days=365))


def test_resolved_room_is_not_expired() -> None:
    room = new_room()
    room.receive(channel_message_id="in-1", text="halo", sent_at=T0)
    room.resolve(SUPERVISOR)

    assert not room.is_expired(T0 + timedelta(days=2))


# ---- conversation snippets ----------------------------------------------------------------------
def test_snippet_marks_matching_words_with_context_on_both_sides() -> None:
    from inbox.adapters.read_models.search import snippet

    text = " ".join(f"w{i}" for i in range(40)) + " Promo besar " + " ".join(f"x{i}" for i in range(40))

    got = snippet(text, ["promo"])

    assert got.startswith("… w32 w33") and "w39 <mark>Promo</mark> besar x0" in got and got.endswith("x14 …")


def test_snippet_escapes_html_and_matches_code_parts() -> None:
    from inbox.adapters.read_models.search import snippet

    assert snippet("<b>INV-2041</b> & co", ["b", "inv", "-2041"]) == (
        "&lt;<mark>b</mark>&gt;<mark>INV</mark>-<mark>2041</mark>&lt;/<mark>b</mark>&gt; &amp; co")
    assert snippet("no match here", ["zzz"]) == "no match here"
