"""Secrets at rest: access tokens and app secrets encrypted with AES-256-GCM under INBOX_SECRET_KEY.

Stored form: ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``. The key id (first 8 hex digits of
SHA-256 of the key) says which key sealed a value, so a wrong key is reported as such instead of as
garbage. Each value is bound to a context string (e.g. ``channel_account:<id>:access_token``) as
AES-GCM associated data: a ciphertext copied into another row or field does not decrypt.

INBOX_SECRET_KEY holds one or more keys separated by commas: the first seals, all open (rotation:
put the new key first, re-seal, then drop the old one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """INBOX_SECRET_KEY is missing, malformed, or not the key a stored secret was sealed with."""


def generate_key() -> str:
    """A new random key in the form INBOX_SECRET_KEY expects (base64url, 32 bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def ensure_key_file(data_dir: Path) -> str:
    """The key kept in `data_dir` (for `inbox dev`), made on first use with owner-only permissions."""
    path = data_dir / KEY_FILE_NAME
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _decode_key(text: str, position: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SecretKeyError(
            f"INBOX_SECRET_KEY key #{position} is not base64url; make one with "
            "`python -c 'from inbox.adapters.secrets import generate_key; print(generate_key())'`"
        ) from None
    if len(raw) != KEY_BYTES:
        raise SecretKeyError(f"INBOX_SECRET_KEY key #{position} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:8]


class SecretBox:
    """Seals and opens secrets; build once from settings, in the composition root."""

    def __init__(self, keys: str | None) -> None:
        parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
        if not parts:
            raise SecretKeyError("INBOX_SECRET_KEY is not set: it is needed to keep access tokens encrypted")
        self._keys: dict[str, AESGCM] = {}
        self._primary = ""
        for position, text in enumerate(parts, start=1):
            raw = _decode_key(text, position)
            key_id = _key_id(raw)
            self._keys.setdefault(key_id, AESGCM(raw))
            if position == 1:
                self._primary = key_id

    @property
    def key_id(self) -> str:
        return self._primary

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self._primary].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}.{self._primary}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, context: str) -> str:
        try:
            version, key_id, payload = stored.split(".", 2)
            blob = base64.urlsafe_b64decode(payload)
        except (ValueError, binascii.Error):
            raise SecretKeyError("stored secret is not in the sealed form v1.<key id>.<data>") from None
        if version != VERSION or len(blob) <= NONCE_BYTES:
            raise SecretKeyError(f"stored secret has unknown format {version!r}")
        aead = self._keys.get(key_id)
        if aead is None:
            configured = ", ".join(self._keys)
            raise SecretKeyError(
                f"stored secret was sealed with key {key_id}, but INBOX_SECRET_KEY holds {configured}: "
                "the wrong key is configured (or the old key was dropped before re-sealing)"
            )
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode()).decode()
        except InvalidTag:
            raise SecretKeyError(
                f"stored secret does not open under key {key_id} for {context!r}: it was altered or "
                "belongs to another record"
            ) from None

    def needs_reseal(self, stored: str) -> bool:
        """True when `stored` was sealed with an older key (rotation)."""
        parts = stored.split(".", 2)
        return len(parts) != 3 or parts[1] != self._primary
