"""`POST /webhooks/meta` without FastAPI's per-request machinery.

Meta delivers most notifications one message per POST, so the route's fixed cost is paid per
message: through FastAPI, the middleware stack, the router and dependency resolution cost more
than verifying and recording the message. This ASGI handler runs in front of them
(`InboxAPI.__call__`) and does the route's work itself: read the body (within the size limit),
verify, parse and record it with the same use case (`MetaWebhooks`), answer 200 with the same
counts. A refusal is answered as the route answers it (`routers/webhooks.py`, `refusal`), any
other error by the application's exception handlers; a body over the size limit is handed to the
regular route, whose size limit answers 413. Request metrics are recorded as the `RequestMetrics`
middleware would.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
from starlette.types import Receive, Scope, Send

from inbox.bootstrap import Container
from inbox.entrypoints.api.fast_path import ASGIHandler, ErrorResponder, body_within_limit, observe, send_json
from inbox.entrypoints.api.routers.webhooks import REFUSALS, meta_webhooks, refusal

PATH = "/webhooks/meta"
ROUTE = PATH  # the route label of the request metrics (the route's path)


class FastWebhooks:
    def __init__(self, container: Container, fallback: ASGIHandler, respond_to_error: ErrorResponder) -> None:
        self.container = container
        self.fallback = fallback
        self.respond_to_error = respond_to_error
        self._hooks = meta_webhooks(container)
        self._max_bytes = container.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        read = await body_within_limit(scope, receive, send, self._max_bytes, self.fallback)
        if read is None:
            return
        header = next((value.decode("latin-1") for name, value in scope["headers"]
                       if name == b"x-hub-signature-256"), None)
        status = 500
        try:
            outcome = await self._hooks.receive_async(read.body, header, received_at=datetime.now(UTC))
        except Exception as e:
            response = await self.respond_to_error(scope, refusal(e) if isinstance(e, REFUSALS) else e)
            status = response.status_code
            await response(scope, receive, send)
        else:
            status = 200
            await send_json(send, 200, orjson.dumps(outcome.as_dict()))
        finally:
            observe(self.container.metrics, "POST", ROUTE, status, started)
