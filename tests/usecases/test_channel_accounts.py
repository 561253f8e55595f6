"""Registering channel accounts and finding them by the channel's external id."""

from __future__ import annotations

import pytest

from domain.channels import Channel
from domain.errors import AlreadyExists, NotAllowed
from domain.staff import Actor, Role
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import ChannelAccounts
from tests.usecases.conftest import ADMIN, SUPERVISOR


def test_an_admin_registers_an_account_that_is_then_found_by_its_external_id(accounts: ChannelAccounts) -> None:
    registered = accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG", app_secret="s")

    assert accounts.find(Channel.INSTAGRAM, "ig-1") == registered
    assert (registered.org_id, registered.channel, registered.app_secret) == ("org1", Channel.INSTAGRAM, "s")


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
