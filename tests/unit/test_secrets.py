"""Secrets at rest: sealed with INBOX_SECRET_KEY, opened only with it, bound to their record."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inbox.adapters.secrets import SecretBox, SecretKeyError, ensure_key_file, generate_key

TOKEN = "EAAG-page-access-token-123"
CONTEXT = "channel_account:acc-1:access_token"


def test_a_sealed_secret_opens_with_the_same_key_and_context() -> None:
    box = SecretBox(generate_key())

    sealed = box.seal(TOKEN, CONTEXT)

    assert box.open(sealed, CONTEXT) == TOKEN


def test_the_sealed_form_does_not_contain_the_secret_and_differs_each_time() -> None:
    box = SecretBox(generate_key())

    one, two = box.seal(TOKEN, CONTEXT), box.seal(TOKEN, CONTEXT)

    assert TOKEN not in one and "EAAG" not in one
    assert one != two
    assert one.startswith(f"v1.{box.key_id}.")


def test_a_wrong_key_is_reported_clearly() -> None:
    sealed = SecretBox(generate_key()).seal(TOKEN, CONTEXT)

    with pytest.raises(SecretKeyError, match="wrong key is configured"):
        SecretBox(generate_key()).open(sealed, CONTEXT)


def test_a_secret_copied_to_another_record_does_not_open() -> None:
    box = SecretBox(generate_key())
    sealed = box.seal(TOKEN, CONTEXT)

    with pytest.raises(SecretKeyError, match="belongs to another record"):
        box.open(sealed, "channel_account:acc-2:access_token")


def test_an_altered_secret_does_not_open() -> None:
    box = SecretBox(generate_key())
    sealed = box.seal(TOKEN, CONTEXT)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")

    with pytest.raises(SecretKeyError):
        box.open(tampered, CONTEXT)


def test_rotation_new_key_first_still_opens_old_secrets_and_flags_them_for_resealing() -> None:
    old, new = generate_key(), generate_key()
    sealed_with_old = SecretBox(old).seal(TOKEN, CONTEXT)
    box = SecretBox(f"{new},{old}")

    assert box.open(sealed_with_old, CONTEXT) == TOKEN
    assert box.needs_reseal(sealed_with_old)
    assert not box.needs_reseal(box.seal(TOKEN, CONTEXT))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "not set"),
        ("", "not set"),
        ("not base64 !!!", "not base64url"),
        ("c2hvcnQ=", "must be 32 bytes"),
    ],
)
def test_a_missing_or_malformed_key_is_refused_with_the_reason(value: str | None, message: str) -> None:
    with pytest.raises(SecretKeyError, match=message):
        SecretBox(value)


def test_garbage_in_the_store_is_refused_with_the_reason() -> None:
    with pytest.raises(SecretKeyError, match="sealed form"):
        SecretBox(generate_key()).open("plaintext-token", CONTEXT)


def test_the_dev_key_file_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    key = ensure_key_file(data_dir)

    assert ensure_key_file(data_dir) == key
    mode = stat.S_IMODE((data_dir / "secret.key").stat().st_mode)
    assert mode == 0o600
    assert SecretBox(key).open(SecretBox(key).seal(TOKEN, CONTEXT), CONTEXT) == TOKEN
