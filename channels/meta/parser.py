"""Meta webhooks (WhatsApp Cloud, Messenger, Instagram, Page feed comments) → channel-neutral facts.

Pure: no I/O, no clock (the caller passes `received_at`). `parse_webhook(payload)` takes the
already-decoded JSON body of `POST /webhooks/meta` and returns a list of `channels.facts` facts
in payload order. A payload that is not shaped like Meta's documented webhooks raises
`WebhookShapeError` with a reason naming the offending path (the API answers 400); things Meta
documents that we deliberately do not record come back as `Ignored` facts with a reason.

Which account a fact belongs to (`channel_account`, the channel's external id):
- `whatsapp_business_account`: `entry[].changes[].value.metadata.phone_number_id` → whatsapp_cloud.
- `page`: `entry[].id` (the page id); `messaging[]` / `standby[]` → facebook_messenger,
  `changes[]` with field `feed` → facebook_comment.
- `instagram`: `entry[].id` (the Instagram professional account id); `messaging[]` → instagram,
  `changes[]` with field `comments` / `live_comments` → instagram_comment.

Timestamps: WhatsApp sends unix seconds as strings, Messenger/Instagram messaging unix
milliseconds, the Page feed unix seconds; `_when` accepts either (values above 10^11 are taken
as milliseconds) and returns an aware UTC datetime.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from channels.facts import (
    DeliveryStatus,
    Fact,
    Ignored,
    InboundMessage,
    MessageEdit,
    MessageRemoval,
    OutboundEcho,
)
from domain.channels import Channel
from domain.limits import bounded_json

WHATSAPP_MEDIA = ("image", "video", "audio", "document", "sticker")
_MEDIA_FIELDS = ("id", "mime_type", "sha256", "filename", "animated", "voice", "url")
_MS_THRESHOLD = 100_000_000_000  # unix seconds stay below this until the year 5138
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


class WebhookShapeError(ValueError):
    """The payload is not shaped like a Meta webhook; the message says where and why."""


def parse_webhook(payload: Any, *, received_at: datetime) -> list[Fact]:
    """Every fact in the payload, in order (entries, then changes / messaging events)."""
    body = _obj(payload, "body")
    kind = body.get("object")
    if not isinstance(kind, str) or not kind:
        raise WebhookShapeError("object: expected a non-empty string")
    entries = _list(body.get("entry"), "entry", required=True)
    facts: list[Fact] = []
    for i, raw in enumerate(entries):
        path = f"entry[{i}]"
        entry = _obj(raw, path)
        if kind == "whatsapp_business_account":
            facts.extend(_whatsapp_entry(entry, path, received_at))
        elif kind == "page":
            facts.extend(_page_entry(entry, path))
        elif kind == "instagram":
            facts.extend(_instagram_entry(entry, path))
        else:
            facts.append(Ignored(f"webhook object {kind!r} is not a messaging object", detail={"entry": i}))
    return facts


# ---- WhatsApp Cloud -------------------------------------------------------------------------
def _whatsapp_entry(entry: dict[str, Any], path: str, received_at: datetime) -> Iterator[Fact]:
    for j, raw in enumerate(_list(entry.get("changes"), f"{path}.changes", required=True)):
        cpath = f"{path}.changes[{j}]"
        change = _obj(raw, cpath)
        field = change.get("field")
        value = _obj(change.get("value"), f"{cpath}.value")
        if field != "messages":
            yield Ignored(f"WhatsApp webhook field {field!r} is not recorded", Channel.WHATSAPP_CLOUD)
            continue
        vpath = f"{cpath}.value"
        metadata = _obj(value.get("metadata"), f"{vpath}.metadata")
        account = _str(metadata.get("phone_number_id"), f"{vpath}.metadata.phone_number_id")
        names: dict[str, str] = {}
        for k, rc in enumerate(_list(value.get("contacts"), f"{vpath}.contacts")):
            contact = _obj(rc, f"{vpath}.contacts[{k}]")
            wa_id = _opt_str(contact.get("wa_id"), f"{vpath}.contacts[{k}].wa_id")
            profile = contact.get("profile")
            name = profile.get("name") if isinstance(profile, dict) else None
            if wa_id and isinstance(name, str) and name:
                names[wa_id] = name
        for k, rm in enumerate(_list(value.get("messages"), f"{vpath}.messages")):
            yield _whatsapp_message(_obj(rm, f"{vpath}.messages[{k}]"), f"{vpath}.messages[{k}]", account, names)
        for k, rs in enumerate(_list(value.get("statuses"), f"{vpath}.statuses")):
            yield _whatsapp_status(_obj(rs, f"{vpath}.statuses[{k}]"), f"{vpath}.statuses[{k}]", account)
        for k, raw_error in enumerate(_list(value.get("errors"), f"{vpath}.errors")):
            error = _obj(raw_error, f"{vpath}.errors[{k}]")
            yield DeliveryStatus(
                channel=Channel.WHATSAPP_CLOUD, channel_account=account, status="error",
                occurred_at=received_at, status_key=f"error:{_digest(error)}", errors=(_error(error),),
            )


def _whatsapp_message(m: dict[str, Any], path: str, account: str, names: dict[str, str]) -> Fact:
    mid = _str(m.get("id"), f"{path}.id")
    sender = _str(m.get("from"), f"{path}.from")
    sent_at = _when(m.get("timestamp"), f"{path}.timestamp")
    mtype = _str(m.get("type"), f"{path}.type")
    if m.get("group_id"):
        return Ignored("WhatsApp group messages are not supported", Channel.WHATSAPP_CLOUD, account, {"id": mid})
    if mtype == "request_welcome":
        return Ignored("WhatsApp request_welcome carries no message", Channel.WHATSAPP_CLOUD, account, {"id": mid})
    text, kind, attachments = _whatsapp_content(m, path, mtype)
    return InboundMessage(
        channel=Channel.WHATSAPP_CLOUD, channel_account=account, contact_id=sender, channel_message_id=mid,
        text=text, sent_at=sent_at, contact_name=names.get(sender), contact_phone=f"+{sender}",
        kind=kind, attachments=attachments,
    )


def _whatsapp_content(m: dict[str, Any], path: str, mtype: str) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    """(text, kind, attachments) of one WhatsApp message by its documented type."""
    if mtype == "text":
        body = _obj(m.get("text"), f"{path}.text")
        return _str(body.get("body"), f"{path}.text.body", allow_empty=True), "text", ()
    if mtype in WHATSAPP_MEDIA:
        media = _obj(m.get(mtype), f"{path}.{mtype}")
        caption = _opt_str(media.get("caption"), f"{path}.{mtype}.caption") or ""
        meta = {k: media[k] for k in _MEDIA_FIELDS if k in media}
        return caption, mtype, ({"type": mtype, **meta},)
    if mtype == "location":
        loc = _obj(m.get("location"), f"{path}.location")
        lat, lng = _number(loc.get("latitude"), f"{path}.location.latitude"), _number(loc.get("longitude"), f"{path}.location.longitude")
        parts = [p for p in (loc.get("name"), loc.get("address")) if isinstance(p, str) and p]
        attachment = {"type": "location", "latitude": lat, "longitude": lng}
        attachment.update({k: loc[k] for k in ("name", "address", "url") if isinstance(loc.get(k), str)})
        return (" — ".join(parts) or f"{lat}, {lng}"), "location", (attachment,)
    if mtype == "contacts":
        cards = []
        for k, rc in enumerate(_list(m.get("contacts"), f"{path}.contacts", required=True)):
            card = _obj(rc, f"{path}.contacts[{k}]")
            name = card.get("name") if isinstance(card.get("name"), dict) else {}
            phones = [p.get("phone") for p in _items(card.get("phones")) if isinstance(p, dict) and p.get("phone")]
            shown = next((n for n in (name.get("formatted_name"), name.get("first_name")) if isinstance(n, str) and n), "")
            cards.append({"type": "contact", "name": shown, "phones": phones})
        return ", ".join(c["name"] for c in cards if c["name"]), "contacts", tuple(cards)
    if mtype == "interactive":
        inter = _obj(m.get("interactive"), f"{path}.interactive")
        itype = _str(inter.get("type"), f"{path}.interactive.type")
        reply = _obj(inter.get(itype), f"{path}.interactive.{itype}")
        if itype in ("button_reply", "list_reply"):
            title = _str(reply.get("title"), f"{path}.interactive.{itype}.title", allow_empty=True)
            attachment = {"type": itype, "id": _opt_str(reply.get("id"), f"{path}.interactive.{itype}.id"), "title": title}
            if isinstance(reply.get("description"), str):
                attachment["description"] = reply["description"]
            return title, "interactive", (attachment,)
        text = reply.get("body") if isinstance(reply.get("body"), str) else ""
        return text, "interactive", ({"type": itype, "name": reply.get("name")},)
    if mtype == "button":
        button = _obj(m.get("button"), f"{path}.button")
        text = _str(button.get("text"), f"{path}.button.text", allow_empty=True)
        return text, "button", ({"type": "button", "payload": button.get("payload"), "text": text},)
    if mtype == "reaction":
        reaction = _obj(m.get("reaction"), f"{path}.reaction")
        emoji = _opt_str(reaction.get("emoji"), f"{path}.reaction.emoji") or ""
        target = _str(reaction.get("message_id"), f"{path}.reaction.message_id")
        return emoji, "reaction", ({"type": "reaction", "message_id": target, "emoji": emoji, "removed": not emoji},)
    if mtype == "order":
        order = _obj(m.get("order"), f"{path}.order")
        items = [
            {k: item.get(k) for k in ("product_retailer_id", "quantity", "item_price", "currency")}
            for item in _list(order.get("product_items"), f"{path}.order.product_items") if isinstance(item, dict)
        ]
        text = order.get("text") if isinstance(order.get("text"), str) else ""
        return text, "order", ({"type": "order", "catalog_id": order.get("catalog_id"), "product_items": items},)
    if mtype == "system":
        system = _obj(m.get("system"), f"{path}.system")
        body = system.get("body") if isinstance(system.get("body"), str) else ""
        attachment = {"type": "system", "system_type": system.get("type")}
        attachment.update({k: system[k] for k in ("wa_id", "new_wa_id", "customer", "identity") if k in system})
        return body, "system", (attachment,)
    # "unsupported", "unknown" and any type Meta adds later: a message we cannot show, kept visibly.
    errors = tuple(_error(e) for e in _items(m.get("errors")) if isinstance(e, dict))
    original = m.get("unsupported", {}).get("type") if isinstance(m.get("unsupported"), dict) else None
    return "", "unsupported", ({"type": "unsupported", "message_type": original or mtype, "errors": list(errors)},)


def _whatsapp_status(s: dict[str, Any], path: str, account: str) -> DeliveryStatus:
    mid = _str(s.get("id"), f"{path}.id")
    status = _str(s.get("status"), f"{path}.status")
    raw_ts = s.get("timestamp")
    occurred_at = _when(raw_ts, f"{path}.timestamp")
    errors = tuple(_error(e) for e in _items(s.get("errors")) if isinstance(e, dict))
    return DeliveryStatus(
        channel=Channel.WHATSAPP_CLOUD, channel_account=account, status=status, occurred_at=occurred_at,
        status_key=f"{status}:{mid}:{raw_ts}", channel_message_id=mid,
        recipient_id=_opt_str(s.get("recipient_id"), f"{path}.recipient_id"), errors=errors,
        correlation_id=_opt_str(s.get("biz_opaque_callback_data"), f"{path}.biz_opaque_callback_data"),
    )


# ---- Messenger and Instagram messaging --------------------------------------------------------
def _messaging_events(entry: dict[str, Any], path: str, channel: Channel, account: str) -> Iterator[Fact]:
    """An entry's `messaging[]` (and, for apps in standby under handover, `standby[]`) items."""
    for key in ("messaging", "standby"):
        for k, raw in enumerate(_list(entry.get(key), f"{path}.{key}")):
            yield _messaging_event(_obj(raw, f"{path}.{key}[{k}]"), f"{path}.{key}[{k}]", channel, account)


def _page_entry(entry: dict[str, Any], path: str) -> Iterator[Fact]:
    page_id = _str(entry.get("id"), f"{path}.id")
    yield from _messaging_events(entry, path, Channel.FACEBOOK_MESSENGER, page_id)
    for j, raw in enumerate(_list(entry.get("changes"), f"{path}.changes")):
        cpath = f"{path}.changes[{j}]"
        change = _obj(raw, cpath)
        if change.get("field") != "feed":
            yield Ignored(f"page webhook field {change.get('field')!r} is not recorded", Channel.FACEBOOK_COMMENT, page_id)
            continue
        yield _feed_change(_obj(change.get("value"), f"{cpath}.value"), f"{cpath}.value", page_id, entry.get("time"))


def _instagram_entry(entry: dict[str, Any], path: str) -> Iterator[Fact]:
    account = _str(entry.get("id"), f"{path}.id")
    yield from _messaging_events(entry, path, Channel.INSTAGRAM, account)
    for j, raw in enumerate(_list(entry.get("changes"), f"{path}.changes")):
        cpath = f"{path}.changes[{j}]"
        change = _obj(raw, cpath)
        if change.get("field") not in ("comments", "live_comments"):
            yield Ignored(f"instagram webhook field {change.get('field')!r} is not recorded", Channel.INSTAGRAM_COMMENT, account)
            continue
        yield _instagram_comment(_obj(change.get("value"), f"{cpath}.value"), f"{cpath}.value", account, entry.get("time"), f"{path}.time")


def _messaging_event(ev: dict[str, Any], path: str, channel: Channel, account: str) -> Fact:
    sender = _str(_obj(ev.get("sender"), f"{path}.sender").get("id"), f"{path}.sender.id")
    recipient = _str(_obj(ev.get("recipient"), f"{path}.recipient").get("id"), f"{path}.recipient.id")
    if "message" in ev:
        return _messaging_message(_obj(ev["message"], f"{path}.message"), path, channel, account, sender, recipient,
                                  ev.get("timestamp"))
    if "delivery" in ev:
        return _delivery(ev, path, channel, account, sender)
    if "read" in ev:
        read = _obj(ev["read"], f"{path}.read")
        mid = _opt_str(read.get("mid"), f"{path}.read.mid")
        if mid:  # Instagram: messaging_seen names the message
            at = _when(ev.get("timestamp"), f"{path}.timestamp")
            return DeliveryStatus(channel, account, "read", at, f"read:{mid}", channel_message_id=mid, recipient_id=sender)
        watermark = read.get("watermark")
        at = _when(watermark, f"{path}.read.watermark")
        return DeliveryStatus(channel, account, "read", at, f"read:{sender}:{watermark}", recipient_id=sender)
    if "reaction" in ev:
        reaction = _obj(ev["reaction"], f"{path}.reaction")
        target = _str(reaction.get("mid"), f"{path}.reaction.mid")
        action = reaction.get("action") or "react"
        emoji = (reaction.get("emoji") or reaction.get("reaction") or "") if action == "react" else ""
        raw_ts = ev.get("timestamp")
        return InboundMessage(
            channel=channel, channel_account=account, contact_id=sender,
            channel_message_id=f"reaction:{target}:{action}:{raw_ts}", text=str(emoji),
            sent_at=_when(raw_ts, f"{path}.timestamp"), kind="reaction",
            attachments=({"type": "reaction", "message_id": target, "emoji": str(emoji),
                          "reaction": reaction.get("reaction"), "removed": action != "react"},),
        )
    if "postback" in ev:
        postback = _obj(ev["postback"], f"{path}.postback")
        raw_ts = ev.get("timestamp")
        mid = _opt_str(postback.get("mid"), f"{path}.postback.mid") or f"postback:{sender}:{raw_ts}"
        title = postback.get("title") if isinstance(postback.get("title"), str) else ""
        return InboundMessage(
            channel=channel, channel_account=account, contact_id=sender, channel_message_id=mid, text=title,
            sent_at=_when(raw_ts, f"{path}.timestamp"), kind="postback",
            attachments=({"type": "postback", "payload": postback.get("payload"), "title": title},),
        )
    if "message_edit" in ev:
        edit = _obj(ev["message_edit"], f"{path}.message_edit")
        mid = _str(edit.get("mid"), f"{path}.message_edit.mid")
        text = _str(edit.get("text"), f"{path}.message_edit.text", allow_empty=True)
        return MessageEdit(
            channel=channel, channel_account=account, contact_id=sender, channel_message_id=mid, text=text,
            edited_at=_when(ev.get("timestamp"), f"{path}.timestamp"),
            edit_key=f"{edit.get('num_edit')}:{_digest(text)}",
        )
    events = sorted(k for k in ev if k not in ("sender", "recipient", "timestamp"))
    return Ignored(f"{channel.value} messaging event {', '.join(events) or '(empty)'} is not recorded", channel, account)


def _messaging_message(
    msg: dict[str, Any], path: str, channel: Channel, account: str, sender: str, recipient: str, raw_ts: Any
) -> Fact:
    mpath = f"{path}.message"
    mid = _str(msg.get("mid"), f"{mpath}.mid")
    at = _when(raw_ts, f"{path}.timestamp")
    if msg.get("is_deleted"):  # Instagram: the customer unsent the message
        return MessageRemoval(channel=channel, channel_account=account, contact_id=sender, channel_message_id=mid,
                              removed_at=at)
    text = _opt_str(msg.get("text"), f"{mpath}.text") or ""
    attachments = tuple(
        _messaging_attachment(_obj(a, f"{mpath}.attachments[{k}]"))
        for k, a in enumerate(_list(msg.get("attachments"), f"{mpath}.attachments"))
    )
    kinds = {a["type"] for a in attachments}
    kind = "text" if not kinds else (kinds.pop() if len(kinds) == 1 else "attachments")
    if isinstance(msg.get("quick_reply"), dict):
        kind = "quick_reply"
        attachments += ({"type": "quick_reply", "payload": msg["quick_reply"].get("payload")},)
    if msg.get("is_unsupported"):
        kind = "unsupported"
    if isinstance(msg.get("reply_to"), dict) and msg["reply_to"].get("mid"):
        attachments += ({"type": "reply_to", "message_id": msg["reply_to"]["mid"]},)
    if msg.get("is_echo"):  # the business's own message, sent from Meta's tools or another app
        metadata = msg.get("metadata")
        return OutboundEcho(
            channel=channel, channel_account=account, contact_id=recipient, channel_message_id=mid, text=text,
            sent_at=at, sender_id=sender, kind=kind, attachments=attachments,
            correlation_id=metadata if isinstance(metadata, str) and metadata else None,
        )
    return InboundMessage(
        channel=channel, channel_account=account, contact_id=sender, channel_message_id=mid, text=text,
        sent_at=at, kind=kind, attachments=attachments,
    )


def _messaging_attachment(a: dict[str, Any]) -> dict[str, Any]:
    atype = a.get("type") if isinstance(a.get("type"), str) else "unknown"
    payload = a.get("payload") if isinstance(a.get("payload"), dict) else {}
    out: dict[str, Any] = {"type": "sticker" if payload.get("sticker_id") else atype}
    for key in ("url", "title", "sticker_id", "ig_post_media_id", "reel_video_id", "template_type"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    if isinstance(a.get("title"), str) and "title" not in out:
        out["title"] = a["title"]
    return out


def _delivery(ev: dict[str, Any], path: str, channel: Channel, account: str, customer: str) -> Fact:
    delivery = _obj(ev["delivery"], f"{path}.delivery")
    watermark = delivery.get("watermark")
    at = _when(watermark, f"{path}.delivery.watermark")
    mids = [m for m in _list(delivery.get("mids"), f"{path}.delivery.mids") if isinstance(m, str)]
    if len(mids) == 1:
        return DeliveryStatus(channel, account, "delivered", at, f"delivered:{mids[0]}", channel_message_id=mids[0],
                              recipient_id=customer)
    # Several (or no) mids: one fact for the watermark; the mids are kept as detail.
    return DeliveryStatus(channel, account, "delivered", at, f"delivered:{customer}:{watermark}",
                          recipient_id=customer, errors=tuple({"mid": m} for m in mids))


# ---- comments ---------------------------------------------------------------------------------
def _feed_change(value: dict[str, Any], path: str, page_id: str, entry_time: Any) -> Fact:
    item, verb = value.get("item"), value.get("verb")
    if item != "comment":
        return Ignored(f"page feed item {item!r} ({verb}) is not a comment", Channel.FACEBOOK_COMMENT, page_id)
    comment_id = _str(value.get("comment_id"), f"{path}.comment_id")
    post_id = _str(value.get("post_id"), f"{path}.post_id")
    author = value.get("from")
    if not isinstance(author, dict) or not author.get("id"):
        return Ignored("comment without an author (Meta withheld `from`)", Channel.FACEBOOK_COMMENT, page_id,
                       {"comment_id": comment_id})
    contact = _str(author.get("id"), f"{path}.from.id")
    if contact == page_id:
        return Ignored("the page's own comment", Channel.FACEBOOK_COMMENT, page_id, {"comment_id": comment_id})
    name = _opt_str(author.get("name"), f"{path}.from.name")
    raw_ts = value.get("created_time", entry_time)
    at = _when(raw_ts, f"{path}.created_time")
    text = _opt_str(value.get("message"), f"{path}.message") or ""
    if verb == "add":
        attachments: tuple[dict[str, Any], ...] = ()
        parent = _opt_str(value.get("parent_id"), f"{path}.parent_id")
        if parent and parent != post_id:  # a reply to another comment
            attachments += ({"type": "reply_to", "comment_id": parent},)
        for media in ("photo", "video"):
            if isinstance(value.get(media), str):
                attachments += ({"type": media, "url": value[media]},)
        kind = next((a["type"] for a in attachments if a["type"] in ("photo", "video")), "text")
        return InboundMessage(
            channel=Channel.FACEBOOK_COMMENT, channel_account=page_id, contact_id=contact,
            channel_message_id=comment_id, text=text, sent_at=at, contact_name=name, post_id=post_id,
            kind=kind, attachments=attachments,
        )
    if verb in ("edited", "edit"):
        return MessageEdit(
            channel=Channel.FACEBOOK_COMMENT, channel_account=page_id, contact_id=contact,
            channel_message_id=comment_id, text=text, edited_at=at, edit_key=f"{raw_ts}:{_digest(text)}",
            post_id=post_id, contact_name=name,
        )
    if verb in ("remove", "delete"):
        return MessageRemoval(
            channel=Channel.FACEBOOK_COMMENT, channel_account=page_id, contact_id=contact,
            channel_message_id=comment_id, removed_at=at, post_id=post_id,
        )
    return Ignored(f"comment verb {verb!r} is not recorded", Channel.FACEBOOK_COMMENT, page_id, {"comment_id": comment_id})


def _instagram_comment(value: dict[str, Any], path: str, account: str, entry_time: Any, time_path: str) -> Fact:
    comment_id = _str(value.get("id"), f"{path}.id")
    author = _obj(value.get("from"), f"{path}.from")
    contact = _str(author.get("id"), f"{path}.from.id")
    if contact == account:
        return Ignored("the account's own comment", Channel.INSTAGRAM_COMMENT, account, {"comment_id": comment_id})
    media = _obj(value.get("media"), f"{path}.media")
    media_id = _str(media.get("id"), f"{path}.media.id")
    attachments: tuple[dict[str, Any], ...] = ()
    parent = _opt_str(value.get("parent_id"), f"{path}.parent_id")
    if parent:
        attachments += ({"type": "reply_to", "comment_id": parent},)
    if isinstance(media.get("media_product_type"), str):
        attachments += ({"type": "media", "media_id": media_id, "media_product_type": media["media_product_type"]},)
    return InboundMessage(
        channel=Channel.INSTAGRAM_COMMENT, channel_account=account, contact_id=contact,
        channel_message_id=comment_id, text=_opt_str(value.get("text"), f"{path}.text") or "",
        sent_at=_when(entry_time, time_path), contact_handle=_opt_str(author.get("username"), f"{path}.from.username"),
        post_id=media_id, attachments=attachments,
    )


# ---- shape helpers ----------------------------------------------------------------------------
def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookShapeError(f"{path}: expected an object, got {_type(value)}")
    return value


def _list(value: Any, path: str, *, required: bool = False) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise WebhookShapeError(f"{path}: expected an array, got {_type(value)}")
    return value


def _str(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WebhookShapeError(f"{path}: expected a string, got {_type(value)}")
    text = str(value)
    if not text and not allow_empty:
        raise WebhookShapeError(f"{path}: must not be empty")
    return text


def _items(value: Any) -> list[Any]:
    """An optional list whose absence or wrong type means "none" (for parts we only pick from)."""
    return value if isinstance(value, list) else []


def _opt_str(value: Any, path: str) -> str | None:
    return None if value is None else _str(value, path, allow_empty=True) or None


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WebhookShapeError(f"{path}: expected a number, got {_type(value)}")
    return float(value)


def _when(value: Any, path: str) -> datetime:
    """Unix seconds or milliseconds (number or digit string) → aware UTC datetime.

    A number beyond what a datetime can hold comes back clamped to year 1 or 9999: the fact is
    kept, and the write side replaces the time by the arrival time (channels/sanitize.py).
    """
    if isinstance(value, str) and value.strip().isdigit():
        digits = value.strip()
        value = int(digits) if len(digits) <= 30 else 10**30
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WebhookShapeError(f"{path}: expected a unix timestamp, got {_type(value)}")
    try:
        return datetime.fromtimestamp(value / 1000 if value >= _MS_THRESHOLD else value, UTC)
    except (OverflowError, OSError, ValueError):
        return _LATEST if value > 0 else _EARLIEST


def _error(error: dict[str, Any]) -> dict[str, Any]:
    out = {k: error[k] for k in ("code", "title", "message") if k in error}
    data = error.get("error_data")
    if isinstance(data, dict) and isinstance(data.get("details"), str):
        out["details"] = data["details"]
    return out


def _digest(value: Any) -> str:
    bounded, _ = bounded_json(value)  # any JSON value: orjson refuses deep nesting and huge integers
    return hashlib.sha256(orjson.dumps(bounded, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _type(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)
