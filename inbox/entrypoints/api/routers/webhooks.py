"""Meta webhooks: `GET /webhooks/meta` (subscription handshake) and `POST /webhooks/meta` (notifications).

Not under /v1 and not bearer-authenticated: Meta proves itself with the verify token (GET) and
the X-Hub-Signature-256 HMAC of the raw body (POST). See docs/meta.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from inbox.entrypoints.api.deps import ContainerDep
from inbox.entrypoints.api.errors import RETRY_AFTER_S
from inbox.bootstrap import Container
from inbox.usecases.meta_webhooks import BadPayload, BadSignature, MetaWebhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def meta_webhooks(container: Container) -> MetaWebhooks:
    return MetaWebhooks(container.settings, container.accounts, container.inbound, container.metrics)


# What refuses a POST before or while it is recorded, as the route answers it (the fast path too,
# inbox/entrypoints/api/fast_webhooks.py); any other error is the application's exception handlers'.
REFUSALS = (BadSignature, BadPayload, TimeoutError)


def refusal(e: BadSignature | BadPayload | TimeoutError) -> HTTPException:
    if isinstance(e, BadSignature):
        return HTTPException(401, str(e))
    if isinstance(e, BadPayload):
        return HTTPException(400, str(e))
    return HTTPException(503, "recording took too long; Meta will retry", headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("/meta", response_class=PlainTextResponse)
def verify_meta_subscription(
    container: ContainerDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> PlainTextResponse:
    """Meta's verification handshake: echo `hub.challenge` when the verify token matches, else 403."""
    answer = meta_webhooks(container).verify_subscription(mode, token, challenge)
    if answer is None:
        raise HTTPException(403, "webhook verification failed")
    return PlainTextResponse(answer)


@router.post("/meta")
async def receive_meta_webhook(request: Request, container: ContainerDep) -> dict[str, int]:
    """Verify the signature, record the POST's valid facts together (refused ones are counted), then answer 200."""
    body = await request.body()
    header = request.headers.get("x-hub-signature-256")
    try:
        outcome = await meta_webhooks(container).receive_async(body, header, received_at=datetime.now(UTC))
    except REFUSALS as e:
        raise refusal(e) from None
    return outcome.as_dict()
