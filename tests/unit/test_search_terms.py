"""Which word of a conversation search is read from the GIN index (the others are rechecked)."""

from __future__ import annotations

from inbox.adapters.read_models.search import likely_matches, rarest_term


def test_the_term_with_the_fewest_recent_matches_is_read_from_the_index() -> None:
    assert rarest_term(["'inv':*", "'-540123':*"], [412, 0]) == "'-540123':*"
    assert rarest_term(["'garansi':*", "'kak':*"], [3, 700]) == "'garansi':*"


def test_among_equally_rare_terms_the_longest_prefix_is_read() -> None:
    assert rarest_term(["'ab':*", "'abcdef':*", "'xyz':*"], [0, 0, 0]) == "'abcdef':*"


def test_a_term_s_matches_are_extrapolated_from_the_newest_messages_unless_those_were_all() -> None:
    assert likely_matches(10, 5000, 10_000_000, window=5000) == 20_000  # 0.2% of 10M: too many to read whole
    assert likely_matches(0, 5000, 10_000_000, window=5000) == 0  # an order code: read from the index
    assert likely_matches(10, 1200, 10_000_000, window=5000) == 10  # the window held every message
    assert likely_matches(10, 5000, -1, window=5000) == 10  # never analysed: the window's rate
