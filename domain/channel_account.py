"""ChannelAccount: one connected WhatsApp number, Facebook page or Instagram account of an organization."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.limits import MAX_NAME, MAX_SECRET, check_identifier, check_optional_text, check_text

ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "https://inbox.example/channel-accounts")


class ChannelAccount(Aggregate):
    @staticmethod
    def create_id(channel: str, external_id: str) -> UUID:
        """Meta's ids are global, so (channel, external id) names one account across all orgs."""
        return channel_account_id_for(channel, external_id)

    class Registered(Aggregate.Created):
        org_id: str
        channel: str
        external_id: str
        name: str
        app_secret: str | None

    @event(Registered)
    def __init__(
        self, org_id: str, channel: str, external_id: str, name: str, app_secret: str | None
    ) -> None:
        self.org_id = org_id
        self.channel = channel
        self.external_id = external_id
        self.name = name
        self.app_secret = app_secret

    @classmethod
    def register(
        cls, *, org_id: str, channel: Channel, external_id: str, name: str, app_secret: str | None = None
    ) -> ChannelAccount:
        check_identifier(external_id.strip(), "external_id")
        check_text(name, "name", MAX_NAME)
        if not name.strip():
            raise InvalidCommand("name is required")
        check_optional_text(app_secret, "app_secret", MAX_SECRET)
        return cls(
            org_id=org_id,
            channel=channel.value,
            external_id=external_id.strip(),
            name=name.strip(),
            app_secret=app_secret or None,
        )


def channel_account_id_for(channel: str, external_id: str) -> UUID:
    return uuid5(ACCOUNT_NAMESPACE, f"{channel}:{external_id.strip()}")
