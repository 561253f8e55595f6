"""The account-connection proof through the Graph API (the use case's AccessChecker port)."""

from __future__ import annotations

import asyncio

from domain.channels import Channel
from inbox.adapters.meta_graph import AccessGranted, MetaGraphClient, RetryAfter
from inbox.usecases.ports import AccessCheck


class GraphAccessChecker:
    def __init__(self, base_url: str, version: str, *, timeout_s: float = 10.0) -> None:
        self._base_url = base_url
        self._version = version
        self._timeout_s = timeout_s

    def check(self, channel: str, external_id: str, access_token: str) -> AccessCheck:
        """Called from a worker thread (sync routes): a short-lived client on its own event loop."""
        return asyncio.run(self._check(Channel(channel), external_id, access_token))

    async def _check(self, channel: Channel, external_id: str, access_token: str) -> AccessCheck:
        async with MetaGraphClient(self._base_url, self._version, timeout_s=self._timeout_s) as client:
            outcome = await client.check_access(external_id, access_token, channel)
        if isinstance(outcome, AccessGranted):
            return AccessCheck(granted=True)
        if isinstance(outcome, RetryAfter):
            return AccessCheck(granted=False, retry=True, reason=outcome.reason)
        return AccessCheck(granted=False, reason=outcome.title)
