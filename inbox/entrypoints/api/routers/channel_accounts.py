from __future__ import annotations

from fastapi import APIRouter

from inbox.entrypoints.api.deps import ActorDep, ContainerDep
from inbox.entrypoints.api.schemas import ChannelAccountOut, RegisterChannelAccount, RotateChannelAccount
from inbox.usecases.ports import AccountCredentials

router = APIRouter(prefix="/v1/channel-accounts", tags=["channel accounts"])


@router.post("", status_code=201, response_model=ChannelAccountOut)
def register_channel_account(body: RegisterChannelAccount, actor: ActorDep, container: ContainerDep) -> ChannelAccountOut:
    """Connect a WhatsApp number (phone_number_id), Facebook page or Instagram account (admin only)."""
    account = container.accounts.register(
        actor, channel=body.channel, external_id=body.external_id, name=body.name, app_secret=body.app_secret,
        access_token=body.access_token,
    )
    return ChannelAccountOut(
        id=account.id, channel=account.channel.value, external_id=account.external_id, name=account.name,
        has_app_secret=bool(body.app_secret), has_access_token=body.access_token is not None,
    )


def _out(c: AccountCredentials) -> ChannelAccountOut:
    return ChannelAccountOut(
        id=c.account_id, channel=c.channel, external_id=c.external_id, name=c.name,
        has_app_secret=c.has_app_secret, has_access_token=c.has_access_token,
        needs_reauth=c.needs_reauth or not c.has_access_token,
    )


@router.get("", response_model=list[ChannelAccountOut])
def list_channel_accounts(actor: ActorDep, container: ContainerDep) -> list[ChannelAccountOut]:
    """The org's connected accounts (admin only); `needs_reauth`: sends wait for a new token."""
    return [_out(c) for c in container.accounts.list(actor)]


@router.patch("/{account_id}", response_model=ChannelAccountOut)
def rotate_channel_account(
    account_id: str, body: RotateChannelAccount, actor: ActorDep, container: ContainerDep
) -> ChannelAccountOut:
    """Rotate the access token (checked with the Graph API first; waiting sends then go out) and/or
    the app secret (a webhook signed with the old one is refused from then on: at once in the API
    process that took the PATCH, within 5 s in the others)."""
    return _out(container.accounts.rotate(actor, account_id, access_token=body.access_token,
                                          app_secret=body.app_secret))


@router.delete("/{account_id}", status_code=204)
def disconnect_channel_account(account_id: str, actor: ActorDep, container: ContainerDep) -> None:
    """Disconnect: the token is forgotten; replies of the account are no longer sent."""
    container.accounts.disconnect(actor, account_id)
