"""Which word of a conversation search is read from the GIN index (the others are rechecked)."""

from __future__ import annotations

from inbox.adapters.read_models.search import rarest_term


def test_the_term_with_the_fewest_recent_matches_is_read_from_the_index() -> None:
    assert rarest_term(["'inv':*", "'-540123':*"], [412, 0]) == "'-540123':*"
    assert rarest_term(["'garansi':*", "'kak':*"], [3, 700]) == "'garansi':*"


def test_among_equally_rare_terms_the_longest_prefix_is_read() -> None:
    assert rarest_term(["'ab':*", "'abcdef':*", "'xyz':*"], [0, 0, 0]) == "'abcdef':*"
