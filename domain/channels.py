"""Channels, the tab they belong to and their customer-service window."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from domain.errors import InvalidCommand


class Channel(StrEnum):
    WHATSAPP_CLOUD = "whatsapp_cloud"
    INSTAGRAM = "instagram"
    FACEBOOK_MESSENGER = "facebook_messenger"
    INSTAGRAM_COMMENT = "instagram_comment"
    FACEBOOK_COMMENT = "facebook_comment"

    @classmethod
    def parse(cls, value: str) -> Channel:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(c.value for c in cls)
            raise InvalidCommand(f"unknown channel {value!r}; expected one of: {allowed}") from None

    @property
    def tab(self) -> str:
        return "comments" if self in COMMENT_CHANNELS else "messages"

    @property
    def is_comment(self) -> bool:
        return self in COMMENT_CHANNELS

    @property
    def reply_window(self) -> timedelta | None:
        """How long after the customer's last message staff may answer freely; None: never expires."""
        return None if self.is_comment else DIRECT_MESSAGE_WINDOW

    def window_closes_at(self, last_inbound_at: datetime | None) -> datetime | None:
        """When a room whose customer last wrote at `last_inbound_at` expires; None: it never does."""
        window = self.reply_window
        return None if window is None or last_inbound_at is None else last_inbound_at + window


COMMENT_CHANNELS = frozenset({Channel.INSTAGRAM_COMMENT, Channel.FACEBOOK_COMMENT})
DIRECT_MESSAGE_WINDOW = timedelta(hours=24)
TABS = ("messages", "comments")
