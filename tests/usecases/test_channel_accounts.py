"""Registering channel accounts and finding them by the channel's external id."""

from __future__ import annotations

import pytest

from domain.channels import Channel
from domain.channel_account import ChannelAccount
from domain.errors import AlreadyExists, InvalidCommand, NotAllowed, NotFound
from domain.staff import Actor, Role
from inbox.adapters.memory_credentials import MemoryCredentials
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases import channel_accounts as module
from inbox.usecases.channel_accounts import ChannelAccounts
from inbox.usecases.results import Unavailable
from tests.usecases.conftest import ADMIN, SUPERVISOR


def test_an_admin_registers_an_account_that_is_then_found_by_its_external_id(accounts: ChannelAccounts) -> None:
    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG", app_secret="s")

    assert accounts.find(Channel.INSTAGRAM, "ig-1") == registered
    assert (registered.org_id, registered.channel) == ("org1", Channel.INSTAGRAM)
    assert accounts.app_secret(registered) == "s"


def test_only_admins_register_accounts(accounts: ChannelAccounts) -> None:
    with pytest.raises(NotAllowed):
        accounts.register(SUPERVISOR, channel="instagram", external_id="ig-1", name="IG")


def test_an_account_registered_twice_is_already_there_even_for_another_org(accounts: ChannelAccounts) -> None:
    accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")

    with pytest.raises(AlreadyExists):
        accounts.register(Actor("admin2", "org2", Role.ADMIN), channel="instagram", external_id="ig-1", name="x")


def test_an_unknown_account_is_none_and_the_same_id_on_another_channel_is_another_account(
    accounts: ChannelAccounts,
) -> None:
    accounts.register(ADMIN, channel="instagram", external_id="42", name="IG")

    assert accounts.find(Channel.INSTAGRAM, "43") is None
    assert accounts.find(Channel.FACEBOOK_MESSENGER, "42") is None


def test_a_found_account_is_cached_for_lookups_without_io(accounts: ChannelAccounts) -> None:
    assert accounts.find_cached(Channel.INSTAGRAM, "ig-1") is None
    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")
    accounts.find(Channel.INSTAGRAM, "ig-1")

    assert accounts.find_cached(Channel.INSTAGRAM, "ig-1") == registered


def test_a_remembered_miss_hides_an_account_another_process_registers_meanwhile(store: MemoryEventStore) -> None:
    here, elsewhere = ChannelAccounts(store), ChannelAccounts(store)
    assert here.find(Channel.INSTAGRAM, "ig-1", cache_missing=True) is None

    elsewhere.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")

    assert here.find(Channel.INSTAGRAM, "ig-1", cache_missing=True) is None  # for MISSING_TTL seconds
    assert here.find(Channel.INSTAGRAM, "ig-1") is not None  # a look-up that does not use the miss cache


def test_registering_an_account_forgets_a_remembered_miss(accounts: ChannelAccounts) -> None:
    assert accounts.find(Channel.INSTAGRAM, "ig-1", cache_missing=True) is None

    accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")

    assert accounts.find(Channel.INSTAGRAM, "ig-1", cache_missing=True) is not None


# ---- the app secret: sealed behind the Credentials port, never in an event, rotatable ----------
def test_the_app_secret_is_kept_by_the_credentials_never_in_the_accounts_event(
    accounts: ChannelAccounts, store: MemoryEventStore
) -> None:
    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG",
                                   app_secret="tenant-app-secret")

    [event] = store.app.events.get(ChannelAccount.create_id("instagram", "ig-1"))
    assert "tenant-app-secret" not in repr(vars(event)) and not hasattr(event, "app_secret")
    assert not hasattr(store.get(ChannelAccount.create_id("instagram", "ig-1")), "app_secret")
    assert "tenant-app-secret" not in repr(registered)
    [listed] = accounts.list(ADMIN)
    assert listed.has_app_secret and "tenant-app-secret" not in repr(listed)


def test_an_app_secret_cannot_be_kept_without_credentials_and_nothing_is_recorded(store: MemoryEventStore) -> None:
    with pytest.raises(Unavailable, match="INBOX_SECRET_KEY"):
        ChannelAccounts(store).register(ADMIN, channel="instagram", external_id="ig-1", name="IG", app_secret="s")

    with pytest.raises(NotFound):
        store.get(ChannelAccount.create_id("instagram", "ig-1"))


def test_a_rotated_app_secret_is_used_at_once_here_and_after_the_cache_time_elsewhere(
    store: MemoryEventStore, credentials: MemoryCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, elsewhere = ChannelAccounts(store, credentials), ChannelAccounts(store, credentials)
    account = here.register(ADMIN, channel="instagram", external_id="ig-1", name="IG", app_secret="old-secret")
    assert elsewhere.app_secret(account) == "old-secret"
    reads = credentials.app_secret_reads
    assert elsewhere.app_secret(account) == "old-secret" and credentials.app_secret_reads == reads  # cached

    here.rotate(ADMIN, account.id, app_secret="new-secret")

    assert here.app_secret(account) == "new-secret"  # this process: at once
    assert elsewhere.app_secret(account) == "old-secret"  # another process: until its cache expires
    now = module.time.monotonic()
    monkeypatch.setattr(module.time, "monotonic", lambda: now + module.APP_SECRET_TTL + 0.1)
    assert elsewhere.app_secret(account) == "new-secret"


def test_a_rotation_needs_something_to_rotate_and_only_admins_of_the_org_rotate(accounts: ChannelAccounts) -> None:
    account = accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG", app_secret="s")

    with pytest.raises(InvalidCommand, match="access_token and/or an app_secret"):
        accounts.rotate(ADMIN, account.id)
    with pytest.raises(NotAllowed):
        accounts.rotate(SUPERVISOR, account.id, app_secret="x")
    with pytest.raises(NotFound):
        accounts.rotate(Actor("admin2", "org2", Role.ADMIN), account.id, app_secret="x")
    assert accounts.app_secret(account) == "s"


def test_a_failed_credentials_write_leaves_no_account_and_the_retry_registers_it_with_its_secret(
    accounts: ChannelAccounts, credentials: MemoryCredentials, store: MemoryEventStore
) -> None:
    from eventsourcing.persistence import OperationalError

    credentials.failing = True
    with pytest.raises(OperationalError):
        accounts.register(ADMIN, channel="instagram", external_id="ig-9", name="IG", app_secret="s9")
    assert accounts.find(Channel.INSTAGRAM, "ig-9") is None  # no account without its secret
    with pytest.raises(NotFound):
        store.get(ChannelAccount.create_id("instagram", "ig-9"))

    credentials.failing = False
    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-9", name="IG", app_secret="s9")
    assert accounts.app_secret(registered) == "s9"
    assert [a.external_id for a in accounts.list(ADMIN)] == ["ig-9"]


def test_a_row_left_by_a_failed_registration_is_no_account_and_the_next_registration_overwrites_it(
    accounts: ChannelAccounts, credentials: MemoryCredentials
) -> None:
    # What a registration that died between its credentials and its event leaves behind.
    account_id = str(ChannelAccount.create_id("instagram", "ig-7"))
    credentials.register(account_id, org_id="org2", channel="instagram", external_id="ig-7", name="theirs",
                         access_token=None, app_secret="their-secret")
    assert accounts.list(Actor("admin2", "org2", Role.ADMIN)) == []
    with pytest.raises(NotFound):
        accounts.rotate(Actor("admin2", "org2", Role.ADMIN), account_id, app_secret="x")

    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-7", name="ours", app_secret="ours")
    assert accounts.app_secret(registered) == "ours"
    assert [(a.org_id, a.name) for a in accounts.list(ADMIN)] == [("org1", "ours")]


def test_registering_an_existing_account_never_touches_its_secrets(
    accounts: ChannelAccounts
) -> None:
    first = accounts.register(ADMIN, channel="instagram", external_id="ig-8", name="IG", app_secret="mine")
    with pytest.raises(AlreadyExists):
        accounts.register(Actor("admin2", "org2", Role.ADMIN), channel="instagram", external_id="ig-8",
                          name="x", app_secret="attacker")
    assert accounts.app_secret(first) == "mine"
