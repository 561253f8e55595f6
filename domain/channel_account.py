"""ChannelAccount: one connected WhatsApp number, Facebook page or Instagram account of an organization.

Its events say which account belongs to which organization, nothing secret: the app secret and the
access token are kept sealed outside the event store (inbox/adapters/outbound/credentials.py), where
a rotation can overwrite them. Registrations stored before that carried `app_secret` in plaintext;
the upcast drops it from the state, and `inbox migrate` moves it into the sealed store and rewrites
those stored events without it (`seal_plaintext_app_secrets`).
"""

from __future__ import annotations

import functools
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.limits import MAX_NAME, check_identifier, check_text

ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "https://inbox.example/channel-accounts")


class ChannelAccount(Aggregate):
    @staticmethod
    def create_id(channel: str, external_id: str) -> UUID:
        """Meta's ids are global, so (channel, external id) names one account across all orgs."""
        return channel_account_id_for(channel, external_id)

    class Registered(Aggregate.Created):
        class_version = 2
        org_id: str
        channel: str
        external_id: str
        name: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # v1 carried the app secret in plaintext: never again in an aggregate's state.
            state.pop("app_secret", None)

    @event(Registered)
    def __init__(self, org_id: str, channel: str, external_id: str, name: str) -> None:
        self.org_id = org_id
        self.channel = channel
        self.external_id = external_id
        self.name = name

    @classmethod
    def register(cls, *, org_id: str, channel: Channel, external_id: str, name: str) -> ChannelAccount:
        check_identifier(external_id.strip(), "external_id")
        check_text(name, "name", MAX_NAME)
        if not name.strip():
            raise InvalidCommand("name is required")
        return cls(org_id=org_id, channel=channel.value, external_id=external_id.strip(), name=name.strip())


@functools.lru_cache(maxsize=4096)  # a uuid5 (SHA-1) per inbound request otherwise
def channel_account_id_for(channel: str, external_id: str) -> UUID:
    return uuid5(ACCOUNT_NAMESPACE, f"{channel}:{external_id.strip()}")
