"""Security basics (issue 7 item 7): short secrets refused, the dev secret needs --dev, optional iss/aud."""

from __future__ import annotations

import pytest

from inbox.adapters.auth import InvalidToken, mint_token, verify_token
from inbox.entrypoints.cli import main
from inbox.config import DEV_JWT_SECRET, MIN_JWT_SECRET_BYTES, ConfigError, Settings

GOOD_JWT = "j" * MIN_JWT_SECRET_BYTES
PRODUCTION = {
    "INBOX_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "INBOX_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "INBOX_JWT_SECRET": GOOD_JWT, "INBOX_META_APP_SECRET": "m" * 32, "INBOX_META_VERIFY_TOKEN": "v",
}


def test_a_jwt_secret_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ConfigError, match="INBOX_JWT_SECRET must be at least 32 bytes"):
        Settings(jwt_secret="j" * (MIN_JWT_SECRET_BYTES - 1)).check_secrets()
    assert Settings(jwt_secret=GOOD_JWT).check_secrets().jwt_secret == GOOD_JWT


def test_a_trivially_short_global_meta_app_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="INBOX_META_APP_SECRET must be at least 16 characters"):
        Settings(meta_app_secret="secret").check_secrets()


@pytest.mark.parametrize("role", ["api", "relay", "worker"])
def test_production_processes_refuse_a_short_jwt_secret_before_touching_anything(
    role: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in {**PRODUCTION, "INBOX_JWT_SECRET": "short"}.items():
        monkeypatch.setenv(k, v)
    assert main([role]) == 2
    assert "INBOX_JWT_SECRET must be at least 32 bytes" in capsys.readouterr().err


def test_the_api_refuses_a_short_global_meta_app_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in {**PRODUCTION, "INBOX_META_APP_SECRET": "x"}.items():
        monkeypatch.setenv(k, v)
    assert main(["api"]) == 2
    assert "INBOX_META_APP_SECRET must be at least 16 characters" in capsys.readouterr().err


def test_inbox_token_refuses_to_sign_with_the_dev_secret_unless_told_dev(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("INBOX_JWT_SECRET", raising=False)
    monkeypatch.chdir("/")  # no .env file to pick a secret up from
    args = ["token", "--org", "o", "--user", "u", "--role", "admin"]
    assert main(args) == 2
    assert "--dev" in capsys.readouterr().err
    monkeypatch.setenv("INBOX_JWT_SECRET", DEV_JWT_SECRET)
    assert main(args) == 2
    assert main([*args, "--dev"]) == 0
    verify_token(DEV_JWT_SECRET, capsys.readouterr().out.strip())


def test_inbox_token_signs_with_the_configured_secret_issuer_and_audience(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INBOX_JWT_SECRET", GOOD_JWT)
    monkeypatch.setenv("INBOX_JWT_ISSUER", "https://id.example")
    monkeypatch.setenv("INBOX_JWT_AUDIENCE", "inbox")
    assert main(["token", "--org", "o", "--user", "u", "--role", "agent"]) == 0
    actor = verify_token(GOOD_JWT, capsys.readouterr().out.strip(), issuer="https://id.example", audience="inbox")
    assert (actor.org_id, actor.user_id) == ("o", "u")


def test_tokens_without_the_configured_issuer_are_refused() -> None:
    plain = mint_token(GOOD_JWT, org="o", user="u", role="admin")
    with pytest.raises(InvalidToken, match="iss"):
        verify_token(GOOD_JWT, plain, issuer="https://id.example")
    other = mint_token(GOOD_JWT, org="o", user="u", role="admin", issuer="https://evil.example")
    with pytest.raises(InvalidToken, match="[Ii]ssuer"):
        verify_token(GOOD_JWT, other, issuer="https://id.example")


def test_tokens_for_another_audience_are_refused() -> None:
    with pytest.raises(InvalidToken, match="aud"):
        verify_token(GOOD_JWT, mint_token(GOOD_JWT, org="o", user="u", role="admin"), audience="inbox")
    other = mint_token(GOOD_JWT, org="o", user="u", role="admin", audience="billing")
    with pytest.raises(InvalidToken, match="[Aa]udience"):
        verify_token(GOOD_JWT, other, audience="inbox")
    ok = mint_token(GOOD_JWT, org="o", user="u", role="admin", audience="inbox", issuer="https://id.example")
    assert verify_token(GOOD_JWT, ok, audience="inbox", issuer="https://id.example").org_id == "o"


def test_without_configured_checks_iss_and_aud_are_not_required() -> None:
    token = mint_token(GOOD_JWT, org="o", user="u", role="admin", audience="anything", issuer="anyone")
    assert verify_token(GOOD_JWT, token).user_id == "u"


@pytest.mark.parametrize("sub", ["*", "-", "a\x00b", " "])
def test_a_token_whose_subject_is_a_reserved_or_unstorable_id_is_refused(sub: str) -> None:
    """`*` and `-` are counter keys: an agent called `*` would read the whole organization's badges."""
    token = mint_token(GOOD_JWT, org="org1", user=sub, role="agent")
    with pytest.raises(InvalidToken, match="claim 'sub'"):
        verify_token(GOOD_JWT, token)


SECRET_A, SECRET_B = "a" * 32, "b" * 32


def test_a_verified_token_is_not_accepted_under_another_secret() -> None:
    token = mint_token(SECRET_A, org="org1", user="u1", role="agent")
    assert verify_token(SECRET_A, token).user_id == "u1"  # now cached

    with pytest.raises(InvalidToken):
        verify_token(SECRET_B, token)


def test_a_cached_token_is_refused_once_it_expires() -> None:
    from tests.support import wait_until

    token = mint_token(SECRET_A, org="org1", user="u2", role="agent", ttl_s=1)
    assert verify_token(SECRET_A, token).user_id == "u2"  # now cached

    def refused() -> str | None:
        try:
            verify_token(SECRET_A, token)
        except InvalidToken as e:
            return str(e)
        return None

    assert "expired" in wait_until(refused, timeout=10, interval=0.05, what="the cached token to expire")
