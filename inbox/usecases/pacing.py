"""Send pacing per account and per recipient (issue 9 item 4), so the sender stays under Meta's
limits instead of learning them from 130429 / 131056 errors.

Pure (the caller passes `now`, e.g. time.monotonic()): `reserve` answers *when* a send may start
and books that slot (the sender sleeps until then), or when to ask again if the customer is paced. GCRA (a token bucket written as one "theoretical
arrival time" per key), so state is one float per account and per recent recipient.

Defaults: WhatsApp Cloud API numbers handle 80 messages/s by default (Meta's throughput page);
pair rate limit (131056) is about one message per 6 s to the same customer, with a small burst we
allow so an agent's two or three quick lines are not spread over 18 s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Gcra:
    interval_s: float  # time between sends at the steady rate
    tolerance_s: float  # how far ahead of the steady rate a burst may run
    tat: float = 0.0  # theoretical arrival time of the next send at the steady rate
    held_until: float = 0.0

    def allowed_at(self, now: float) -> float:
        return max(now, self.tat - self.tolerance_s, self.held_until)

    def book(self, at: float) -> None:
        self.tat = max(self.tat, at) + self.interval_s


def _bucket(rate_per_s: float, burst: int) -> _Gcra:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError("rate must be positive and burst at least 1")
    interval = 1.0 / rate_per_s
    return _Gcra(interval_s=interval, tolerance_s=(burst - 1) * interval)


class Pacer:
    def __init__(
        self,
        *,
        account_rate_per_s: float = 80.0,
        account_burst: int = 80,
        recipient_rate_per_s: float = 1 / 6,
        recipient_burst: int = 3,
        max_recipients: int = 100_000,
    ) -> None:
        self._account_args = (account_rate_per_s, account_burst)
        self._recipient_args = (recipient_rate_per_s, recipient_burst)
        self._accounts: dict[str, _Gcra] = {}
        self._recipients: dict[tuple[str, str], _Gcra] = {}
        self._max_recipients = max_recipients

    def _account(self, account_id: str) -> _Gcra:
        if account_id not in self._accounts:
            self._accounts[account_id] = _bucket(*self._account_args)
        return self._accounts[account_id]

    def _recipient(self, account_id: str, recipient_id: str, now: float) -> _Gcra:
        key = (account_id, recipient_id)
        if key not in self._recipients:
            if len(self._recipients) >= self._max_recipients:
                self._forget_idle(now)
            self._recipients[key] = _bucket(*self._recipient_args)
        return self._recipients[key]

    def _forget_idle(self, now: float) -> None:
        """Drop recipients whose bucket is full again: forgetting them changes no answer."""
        idle = [k for k, b in self._recipients.items() if b.tat <= now and b.held_until <= now]
        for key in idle:
            del self._recipients[key]

    def reserve(self, account_id: str, recipient_id: str, now: float) -> tuple[bool, float]:
        """(booked, at): when booked, the send may start at `at` (>= now) and that slot is taken.

        When the recipient is not ready, nothing is booked and `at` says when to ask again: booking
        the account that far ahead would stall every other customer of the account behind one.
        """
        recipient = self._recipient(account_id, recipient_id, now)
        ready = recipient.allowed_at(now)
        if ready > now:
            return False, ready
        account = self._account(account_id)
        at = account.allowed_at(now)
        account.book(at)
        recipient.book(at)
        return True, at

    def hold_account(self, account_id: str, until: float) -> None:
        """Meta said the account is over its rate (130429, 4, 80007, 613): nothing before `until`."""
        bucket = self._account(account_id)
        bucket.held_until = max(bucket.held_until, until)

    def hold_recipient(self, account_id: str, recipient_id: str, until: float, now: float) -> None:
        """Meta said this customer got too many messages (131056): nothing to them before `until`."""
        bucket = self._recipient(account_id, recipient_id, now)
        bucket.held_until = max(bucket.held_until, until)

    @property
    def tracked_recipients(self) -> int:
        return len(self._recipients)
