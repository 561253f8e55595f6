from __future__ import annotations

from fastapi import APIRouter

from inbox.entrypoints.api.deps import ActorDep, ContainerDep
from inbox.entrypoints.api.schemas import ChannelAccountOut, RegisterChannelAccount

router = APIRouter(prefix="/v1/channel-accounts", tags=["channel accounts"])


@router.post("", status_code=201, response_model=ChannelAccountOut)
def register_channel_account(body: RegisterChannelAccount, actor: ActorDep, container: ContainerDep) -> ChannelAccountOut:
    """Connect a WhatsApp number (phone_number_id), Facebook page or Instagram account (admin only)."""
    account = container.accounts.register(
        actor, channel=body.channel, external_id=body.external_id, name=body.name, app_secret=body.app_secret
    )
    return ChannelAccountOut(
        id=account.id, channel=account.channel.value, external_id=account.external_id, name=account.name,
        has_app_secret=account.app_secret is not None,
    )
