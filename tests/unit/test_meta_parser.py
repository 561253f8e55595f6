"""channels.meta.parse_webhook on Meta's documented payloads (tests/fixtures/meta, sources in its README)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from channels.facts import DeliveryStatus, Ignored, InboundMessage, MessageEdit, MessageRemoval, OutboundEcho
from channels.meta.parser import WebhookShapeError, parse_webhook
from domain.channels import Channel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def parse(payload: Any) -> list[Any]:
    return parse_webhook(payload, received_at=NOW)


def only(name: str) -> Any:
    [fact] = parse(load(name))
    return fact


def test_every_fixture_is_documented_in_the_readme() -> None:
    readme = (FIXTURES / "README.md").read_text()
    for path in FIXTURES.glob("*.json"):
        assert f"`{path.name}`" in readme, path.name


def test_whatsapp_text_keeps_the_channel_id_timestamp_and_profile_name() -> None:
    fact = only("wa_text.json")
    assert fact == InboundMessage(
        channel=Channel.WHATSAPP_CLOUD, channel_account="106540352242922", contact_id="16505551234",
        channel_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        text="Does it come in another color?", sent_at=datetime.fromtimestamp(1749416383, UTC),
        contact_name="Sheena Nelson", contact_phone="+16505551234",
    )


@pytest.mark.parametrize(("name", "kind", "text"), [
    ("wa_image.json", "image", "This is how it looks now"),
    ("wa_video.json", "video", "Unboxing video"),
    ("wa_audio.json", "audio", ""),
    ("wa_document.json", "document", "Invoice for order #3412"),
    ("wa_sticker.json", "sticker", ""),
])
def test_whatsapp_media_carry_caption_and_media_metadata(name: str, kind: str, text: str) -> None:
    fact = only(name)
    assert (fact.kind, fact.text) == (kind, text)
    [attachment] = fact.attachments
    assert attachment["type"] == kind and attachment["id"] and attachment["mime_type"] and attachment["sha256"]


def test_whatsapp_document_keeps_its_filename_and_audio_its_voice_flag() -> None:
    assert only("wa_document.json").attachments[0]["filename"] == "lucky-shrub-invoice.pdf"
    assert only("wa_audio.json").attachments[0]["voice"] is True


def test_whatsapp_location_contacts_and_order() -> None:
    location = only("wa_location.json")
    assert location.attachments[0] == {
        "type": "location", "latitude": 37.44221496582, "longitude": -122.16138458252, "name": "Philz Coffee",
        "address": "101 Forest Ave, Palo Alto, CA 94301", "url": "https://philzcoffee.com"}
    contacts = only("wa_contacts.json")
    assert contacts.text == "Barbara J. Johnson"
    assert contacts.attachments[0]["phones"] == ["+16505559999", "+19175559999"]
    order = only("wa_order.json")
    assert order.kind == "order" and len(order.attachments[0]["product_items"]) == 2


def test_whatsapp_interactive_and_template_button_replies() -> None:
    button = only("wa_interactive_button_reply.json")
    assert (button.kind, button.text, button.attachments[0]["id"]) == ("interactive", "Change", "change-button")
    listed = only("wa_interactive_list_reply.json")
    assert listed.attachments[0] == {"type": "list_reply", "id": "priority_express", "title": "Priority Mail Express",
                                     "description": "Next Day to 2 Days"}
    template = only("wa_button.json")
    assert (template.kind, template.attachments[0]["payload"]) == ("button", "Unsubscribe from Promos")


def test_whatsapp_reactions_and_their_removal() -> None:
    added, removed = only("wa_reaction.json"), only("wa_reaction_removed.json")
    assert (added.kind, added.text, added.attachments[0]["removed"]) == ("reaction", "👍", False)
    assert (removed.text, removed.attachments[0]["removed"]) == ("", True)
    assert added.attachments[0]["message_id"] == removed.attachments[0]["message_id"]


def test_whatsapp_system_and_unsupported_messages_stay_visible() -> None:
    system = only("wa_system.json")
    assert system.kind == "system" and system.attachments[0]["system_type"] == "user_changed_number"
    unsupported = only("wa_unsupported.json")
    assert unsupported.kind == "unsupported" and unsupported.attachments[0]["errors"][0]["code"] == 131051


@pytest.mark.parametrize(("name", "status"), [
    ("wa_status_sent.json", "sent"), ("wa_status_delivered.json", "delivered"), ("wa_status_read.json", "read"),
    ("wa_status_failed.json", "failed"),
])
def test_whatsapp_statuses_are_delivery_facts(name: str, status: str) -> None:
    fact = only(name)
    assert isinstance(fact, DeliveryStatus) and fact.status == status and fact.recipient_id == "16505551234"
    assert fact.status_key.startswith(f"{status}:wamid.")


def test_whatsapp_value_errors_are_delivery_facts_with_a_content_key() -> None:
    fact = only("wa_errors.json")
    assert (fact.status, fact.occurred_at, fact.errors[0]["code"]) == ("error", NOW, 130429)
    assert fact.status_key == only("wa_errors.json").status_key


def test_messenger_text_quick_reply_and_attachment() -> None:
    text = only("fb_messenger_text.json")
    assert (text.channel, text.channel_account, text.contact_id) == (Channel.FACEBOOK_MESSENGER, "104536785812345", "6677889900112233")
    assert text.sent_at == datetime.fromtimestamp(1458692752.478, UTC)  # milliseconds
    quick = only("fb_messenger_quick_reply.json")
    assert quick.kind == "quick_reply" and quick.attachments[0]["payload"] == "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_RED"
    image = only("fb_messenger_attachment.json")
    assert (image.kind, image.text) == ("image", "") and image.attachments[0]["url"].startswith("https://")


def test_messenger_echo_is_outbound_to_the_recipient() -> None:
    echo = only("fb_messenger_echo.json")
    assert isinstance(echo, OutboundEcho)
    assert (echo.contact_id, echo.sender_id) == ("6677889900112233", "104536785812345")
    assert echo.correlation_id == "DEVELOPER_DEFINED_METADATA_STRING"  # message.metadata of the Send API request


def test_messenger_delivery_and_read_are_status_facts() -> None:
    delivery, read = only("fb_messenger_delivery.json"), only("fb_messenger_read.json")
    assert delivery.status == "delivered" and delivery.channel_message_id == "mid.1458668856218:ed81099e15d3f4f233"
    assert read.status == "read" and read.status_key == "read:6677889900112233:1458668856253"


def test_instagram_messages_attachments_shares_and_echoes() -> None:
    text = only("ig_dm_text.json")
    assert (text.channel, text.channel_account, text.text) == (Channel.INSTAGRAM, "17841405822304914", "Halo, apakah ini ready?")
    assert only("ig_dm_image.json").kind == "image"
    share = only("ig_dm_share.json")
    assert share.kind == "share" and share.attachments[0]["ig_post_media_id"] == "18139494541428835"
    assert isinstance(only("ig_dm_echo.json"), OutboundEcho)


def test_instagram_unsent_message_is_a_removal() -> None:
    payload = load("ig_dm_text.json")
    payload["entry"][0]["messaging"][0]["message"] = {"mid": "aWdfZAG1", "is_deleted": True}
    [fact] = parse(payload)
    assert isinstance(fact, MessageRemoval) and fact.channel_message_id == "aWdfZAG1"


def test_facebook_comments_add_reply_edit_remove() -> None:
    add = only("fb_feed_comment_add.json")
    assert (add.channel, add.post_id, add.contact_name, add.attachments) == (
        Channel.FACEBOOK_COMMENT, "104536785812345_122104783592040432", "Budi Santoso", ())
    reply = only("fb_feed_comment_reply.json")
    assert reply.attachments == ({"type": "reply_to", "comment_id": "122104783592040432_1234567890123456"},)
    edit = only("fb_feed_comment_edited.json")
    assert isinstance(edit, MessageEdit) and edit.channel_message_id == add.channel_message_id
    assert edit.text == "Masih ada ukuran L?" and edit.edited_at == datetime.fromtimestamp(1718000300, UTC)
    removal = only("fb_feed_comment_remove.json")
    assert isinstance(removal, MessageRemoval) and removal.channel_message_id == add.channel_message_id


def test_other_feed_items_are_ignored_with_a_reason() -> None:
    for name in ("fb_feed_status_post.json", "fb_feed_like.json"):
        fact = only(name)
        assert isinstance(fact, Ignored) and "not a comment" in fact.reason


def test_the_page_own_comment_is_ignored() -> None:
    payload = load("fb_feed_comment_add.json")
    payload["entry"][0]["changes"][0]["value"]["from"] = {"id": "104536785812345", "name": "Lucky Shrub"}
    assert isinstance(parse(payload)[0], Ignored)


def test_instagram_comments_use_username_and_media() -> None:
    comment = only("ig_comment.json")
    assert (comment.channel, comment.contact_handle, comment.post_id) == (
        Channel.INSTAGRAM_COMMENT, "ana.lucia", "18172143295349192")
    assert comment.sent_at == datetime.fromtimestamp(1755779280, UTC)
    assert only("ig_comment_reply.json").attachments[0] == {"type": "reply_to", "comment_id": "17919697626119712"}


def test_entries_and_changes_keep_their_order_in_a_batch() -> None:
    a, b = load("wa_text.json"), load("wa_image.json")
    facts = parse({"object": "whatsapp_business_account", "entry": a["entry"] + b["entry"]})
    assert [f.kind for f in facts] == ["text", "image"]


@pytest.mark.parametrize(("payload", "where"), [
    ("nope", "body"),
    ({"entry": []}, "object"),
    ({"object": "page", "entry": {}}, "entry"),
    ({"object": "page", "entry": [{"id": "1", "messaging": [{"sender": {}, "recipient": {"id": "1"}}]}]},
     "entry[0].messaging[0].sender.id"),
    ({"object": "instagram", "entry": [{"id": "1", "time": 1, "changes": [{"field": "comments", "value": {"id": "c"}}]}]},
     "entry[0].changes[0].value.from"),
    ({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": "1"}, "messages": [{"id": "w", "from": "6", "timestamp": "1", "type": "text", "text": {}}]}}]}]},
     "messages[0].text.body"),
])
def test_wrong_shapes_raise_with_the_path(payload: Any, where: str) -> None:
    with pytest.raises(WebhookShapeError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse(payload)


def test_unknown_objects_are_ignored_not_errors() -> None:
    [fact] = parse({"object": "permissions", "entry": [{"id": "1", "changes": []}]})
    assert isinstance(fact, Ignored)
