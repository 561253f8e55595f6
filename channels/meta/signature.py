"""Meta's webhook signature (X-Hub-Signature-256): HMAC-SHA256 of the raw body with the app secret."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "sha256="


def signature(secret: str, body: bytes) -> str:
    """The header value Meta would send for `body` signed with `secret`."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
