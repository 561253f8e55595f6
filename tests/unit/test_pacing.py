"""Send pacing: per account and per recipient, decided from the clock the caller passes."""

from __future__ import annotations

import pytest

from inbox.usecases.pacing import Pacer


def at(pacer: Pacer, account: str, recipient: str, now: float) -> float:
    booked, when = pacer.reserve(account, recipient, now)
    assert booked
    return when


def test_sends_within_the_burst_go_at_once() -> None:
    pacer = Pacer(account_rate_per_s=10, account_burst=5)

    assert [at(pacer, "acc", f"r{i}", now=0.0) for i in range(5)] == [0.0] * 5


def test_past_the_account_burst_sends_are_spaced_at_the_account_rate() -> None:
    pacer = Pacer(account_rate_per_s=10, account_burst=2)

    times = [at(pacer, "acc", f"r{i}", now=0.0) for i in range(4)]

    assert times == pytest.approx([0.0, 0.0, 0.1, 0.2])


def test_accounts_are_paced_independently() -> None:
    pacer = Pacer(account_rate_per_s=1, account_burst=1)

    assert at(pacer, "a", "r", now=0.0) == 0.0
    assert at(pacer, "b", "r", now=0.0) == 0.0
    assert at(pacer, "a", "r2", now=0.0) == pytest.approx(1.0)


def test_one_recipient_gets_a_small_burst_then_waits_one_interval() -> None:
    pacer = Pacer(recipient_rate_per_s=1 / 6, recipient_burst=3)

    assert [at(pacer, "acc", "customer", now=0.0) for _ in range(3)] == [0.0] * 3
    assert pacer.reserve("acc", "customer", now=0.0) == (False, pytest.approx(6.0))
    assert at(pacer, "acc", "customer", now=6.0) == 6.0


def test_a_paced_recipient_does_not_hold_up_the_accounts_other_customers() -> None:
    pacer = Pacer(recipient_rate_per_s=1 / 6, recipient_burst=1)
    at(pacer, "acc", "customer", now=0.0)

    assert pacer.reserve("acc", "customer", now=0.0)[0] is False
    assert at(pacer, "acc", "someone-else", now=0.0) == 0.0


def test_the_bucket_refills_with_time() -> None:
    pacer = Pacer(recipient_rate_per_s=1 / 6, recipient_burst=1)
    at(pacer, "acc", "customer", now=0.0)

    assert at(pacer, "acc", "customer", now=7.0) == 7.0


def test_a_rate_limit_answer_holds_the_account() -> None:
    pacer = Pacer()
    pacer.hold_account("acc", until=30.0)

    assert at(pacer, "acc", "r", now=1.0) == 30.0
    assert at(pacer, "other", "r", now=1.0) == 1.0


def test_a_pair_rate_limit_answer_holds_only_that_recipient() -> None:
    pacer = Pacer()
    pacer.hold_recipient("acc", "customer", until=20.0, now=1.0)

    assert pacer.reserve("acc", "customer", now=1.0) == (False, 20.0)
    assert at(pacer, "acc", "another", now=1.0) == 1.0


def test_idle_recipients_are_forgotten_when_the_table_is_full() -> None:
    pacer = Pacer(recipient_burst=1, max_recipients=3)
    for i in range(3):
        at(pacer, "acc", f"r{i}", now=0.0)

    at(pacer, "acc", "r3", now=100.0)

    assert pacer.tracked_recipients == 1


@pytest.mark.parametrize("kwargs", [{"account_rate_per_s": 0}, {"recipient_burst": 0}])
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Pacer(**kwargs).reserve("acc", "r", now=0.0)
