from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter

from inbox.entrypoints.api.deps import ContainerDep, IngestDep
from inbox.entrypoints.api.schemas import InboundAccepted, RecordInboundMessage
from domain.channels import Channel
from domain.errors import InvalidCommand
from inbox.usecases.ingest import InboundMessage
from inbox.usecases.results import Unavailable

router = APIRouter(prefix="/v1/inbound-messages", tags=["ingestion"])


@router.post("", status_code=202, response_model=InboundAccepted)
async def record_inbound_message(body: RecordInboundMessage, actor: IngestDep, container: ContainerDep) -> InboundAccepted:
    """Record one customer message; the same channel message id twice is recorded once.

    Async on purpose: the request waits for the group commit without holding a thread.
    """
    channel = Channel(body.channel)
    account = container.accounts.find_cached(channel, body.channel_account)
    if account is None:
        try:  # the look-up is bounded like the commit: a stalled database is a 503, not a hang
            with anyio.fail_after(container.settings.inbound_timeout_s):
                account = await anyio.to_thread.run_sync(
                    container.accounts.find, channel, body.channel_account, abandon_on_cancel=True
                )
        except TimeoutError:
            raise Unavailable("the message store is not answering in time; retry later") from None
    if account is None or account.org_id != actor.org_id:
        container.metrics.inbound_messages.labels("unknown_account").inc()
        raise InvalidCommand(f"unknown {body.channel} channel account {body.channel_account!r}")
    result = await container.inbound.submit_async(
        account,
        InboundMessage(
            channel=channel, channel_account=body.channel_account, contact_id=body.contact.id,
            channel_message_id=body.message.id, text=body.message.text, sent_at=body.message.sent_at,
            contact_name=body.contact.name, contact_phone=body.contact.phone, contact_handle=body.contact.handle,
            post_id=body.post_id,
        ),
        timeout=container.settings.inbound_timeout_s,
    )
    container.metrics.inbound_messages.labels("duplicate" if result.duplicate else "recorded").inc()
    return InboundAccepted(**vars(result))
