"""Search over the projections, index-backed, with the same visibility and filters as the lists.

- by contact: `rooms.search_name` (folded name + handle) matched as a substring (LIKE) or, for
  typos, by trigram word similarity (`q <% search_name`, threshold in inbox.adapters.postgres), and
  `rooms.phone_digits` (national number) as a substring; both from GIN `gin_trgm_ops` indexes.
  The ranking rule (its one home; tests/integration/test_search.py pins it):
  1. Two groups, one after the other: *substring* matches (name or handle holds the query, or the
     phone digits do), then *similar* ones (a typo: similar, not a substring).
  2. Within the substring group: whole word(s) 4 > start of a word 3 > phone digits 2.5 > anywhere
     2; within the similar group: word similarity (0.5..1); then newest activity, then id.
  3. Bounded: a group is ranked over its matches among the organization's newest CONTACT_WINDOW
     rooms (those the viewer sees under the tab/status filter), except the substring group of a
     query the trigram index can look up (every pattern of at least 3 characters) whose matches in
     the whole organization, whoever may see them, are at most CONTACT_MAX_MATCHES: that group is
     ranked over all of them the viewer sees. Unless the window's share, extrapolated to all the
     organization's rooms (`likely_matches`), says over twice that: then they are not even
     counted (a first name in 1% of a million rooms: 501 rows read for nothing). So no search
     reads more than CONTACT_WINDOW rooms or CONTACT_MAX_MATCHES + 1 matches, whatever the data
     set's size, the viewer's role or the query. What it gives up: rooms older than the newest
     CONTACT_WINDOW are not found by a typo (the similar group), by one or two characters, or by
     a name more than CONTACT_MAX_MATCHES rooms of the organization hold, however well they
     match, and such a group ends (no further page) where the window's matches end. Why each
     bound: similarity is a lossy trigram lookup (a typo of a short name had 157 matches among
     25,000 candidates read, 123 ms, over 1M rooms); fewer than 3 characters have no trigram (a
     whole scan of the rooms, ~800 ms); and the viewer's own matches among many more of the
     organization's would all be read to count them.
  Shortcut: the newest WHOLE_WORD_WALK rooms are read in activity order for whole-word matches
  first; when those fill the page it is exactly the ranking's page (whole words are the top tier
  and every room outside the walk is older), in either case of 3. The walk is shorter than the
  window: it pays off for a common name (it stops as soon as the page is full) and is wasted
  work for every other query, whose page the groups below rank anyway. Then group by group: its
  matches in the window first (the trigram bitmap ANDed with the window's `rooms_by_activity`
  range, or that range walked, so only the window's rooms are read); then, for a substring group
  the index can look up, with at most CONTACT_MAX_MATCHES matches in the window and not likely
  more than twice that in all, the organization's matches, at most CONTACT_MAX_MATCHES + 1 read.
  Rows read are bounded by those numbers; what still grows with the data set is the trigram
  bitmap itself (index postings, no heap).
- by conversation: `messages.text_tsv` (to_tsvector('simple', text), GIN) with every word of
  the query — split by the same text-search parser as the messages, so "INV-2041" finds
  "INV-2041" — as a prefix (`'inv':* & '-2041':*`); one hit per room (its latest matching
  message) with a snippet, newest first. The planner cannot tell common from rare prefix terms
  (it estimates every `:*` term at 2%), so the strategy is explicit:
  1. the organization's newest RECENT_WINDOW messages (`messages_by_org_recorded`, in order)
     checked against the query: enough for any word that is not rare;
  2. if that finds too few rooms: how often the query and each of its terms occur in that
     window; when the rarest term (fewest there, see `rarest_term`) is not common there (fewer
     than COMMON_MATCHES) and its matches in the whole store, extrapolated from the window
     (`likely_matches`), are not over 2 * RARE_MATCHES, every message holding it from the GIN
     index — the other terms rechecked on those rows — provided it has at most RARE_MATCHES of
     them (at most that many rows read, then sorted newest first): exact;
  3. otherwise room by room: the viewer's rooms under the tab/status filter in activity order,
     each with its latest matching message (its messages walked newest first,
     `messages_by_recorded`), until the rooms left are older than the page's oldest hit (a room
     has no message newer than its activity): exact. All of them when the filter leaves few
     (ROOMS_FIRST_LIMIT, an exact number from the maintained counters), else at most
     ROOMS_FIRST_PROBE when the filter leaves at most a fifth of the organization's rooms (with
     more, the walk below passes over few matches and is faster). A common word stops after a
     few dozen rooms, a word in 0.2% of the messages after ~800 (1M rooms, a filter leaving
     27,000);
  4. otherwise (the probe did not end) the newest WALK_WINDOW messages walked newest first,
     stopping as soon as enough rooms are found; if they hold too few and 2 did not run, 2 now
     (exact when the term has at most RARE_MATCHES matches), unless the extrapolation says the
     term has more than 2 * RARE_MATCHES. What that gives up: a query whose rarest term has more
     than RARE_MATCHES matches (or looks so: a rate in the window over twice RARE_MATCHES in the
     whole store), that the probe of 3 does not settle, and whose newest WALK_WINDOW messages
     hold too few rooms does not find the older ones (before, every match was read from the GIN
     index: ~18,000 rows for a word in 0.2% of 10M messages, and every posting of every word
     under a common prefix such as 'inv':*). The extrapolation
     spares a word that is rare but not that rare (0.2% of 10M messages) a read of the index
     that only finds it has too many matches (2,001 rows read for nothing, 35-70 ms there).
  Visibility and filters are checked per candidate message with a primary-key probe of `rooms`.
  In 1, 2 and 4, the newest k matches of visible rooms are deduplicated per room, k growing only
  when they hold too few rooms. Exact: a room whose latest match is outside the newest k matches
  (or outside the window) ranks after every room found inside them.

Pages use an offset cursor: a ranked result is not a stable keyset (ranks move as rooms change).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any


from domain.errors import InvalidCommand
from domain.staff import Actor
from domain.visibility import ALL, counter_keys, sql_predicate
from inbox.adapters.read_models.queries import (
    ReadModelReader, RoomFilter, decode_cursor, encode_cursor, filter_clauses, room_json,
)
from projections.text import has_words, name_query, phone_query

MAX_OFFSET = 10_000
CONTACT_WINDOW = 5_000  # newest rooms of the organization: where a contact group is ranked, unless in full (rule 3)
CONTACT_MAX_MATCHES = 500  # a substring group the organization has at most this many matches of is ranked in full
TRIGRAM = 3  # characters a LIKE pattern needs for the trigram index to look it up
WHOLE_WORD_WALK = 1_000  # newest rooms of the organization walked for whole-word matches first (a shortcut)
CONTACT_GROUPS = ("substring", "similar")  # ranked one after the other: every substring match first
RECENT_WINDOW = 5_000  # newest messages of the organization looked at first
ROOMS_FIRST_LIMIT = 5_000  # at most this many filtered rooms: search them room by room
ROOMS_FIRST_PROBE = 2_000  # with more filtered rooms, room by room still reads this many before the walk
ROOMS_FIRST_PROBE_SHARE = 5  # when they are at most a fifth of the organization's rooms
ROOMS_FIRST_CHUNK = 50  # rooms read in activity order at first (then 4 times more each time) when room by room
COMMON_MATCHES = 50  # this many matches among the recent window (1%): a common word, walk on
WALK_WINDOW = 200_000  # how far back the walk for a common word goes (it stops when it has enough)
# Candidate matches one query looks at, at most, whatever the cursor: bounded work. A room whose
# latest match is older than the newest MAX_MATCHES matches is not found by that page.
MAX_MATCHES = 100_000
# A word (the query's rarest) with at most this many matches in the organization is read whole from
# the GIN index (at most this many rows, in no order, then sorted); with more, it is searched in the
# newest WALK_WINDOW messages only.
RARE_MATCHES = 2_000
SNIPPET_WORDS_BEFORE = 8
SNIPPET_WORDS_AFTER = 16
_WORDS = re.compile(r"\w+")


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    value = decode_cursor(cursor).get("o")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OFFSET:
        raise InvalidCommand("invalid cursor")
    return value


def _next_cursor(rows: Sequence[Any], limit: int, offset: int) -> str | None:
    if len(rows) <= limit or offset + limit > MAX_OFFSET:
        return None
    return encode_cursor({"o": offset + limit})


def snippet(text: str, lexemes: Sequence[str]) -> str:
    """A few words around the first match, HTML-escaped, matching words in <mark>…</mark>.

    `lexemes` are the query's words as the text-search parser produced them ('-2041' for the
    number in "INV-2041"); a word matches when it starts with one of them.
    """
    prefixes = tuple(p for p in (lx.lstrip("-").lower() for lx in lexemes) if p)
    words = list(_WORDS.finditer(text))
    hits = [i for i, w in enumerate(words) if prefixes and w.group().lower().startswith(prefixes)]
    first = hits[0] if hits else 0
    lo, hi = max(0, first - SNIPPET_WORDS_BEFORE), min(len(words), first + SNIPPET_WORDS_AFTER + 1)
    if not words:
        return html.escape(text[:200])
    start = 0 if lo == 0 else words[lo].start()
    end = len(text) if hi == len(words) else words[hi - 1].end()
    out, pos = [], start
    for i in range(lo, hi):
        w = words[i]
        if i in hits:
            out += [html.escape(text[pos:w.start()]), "<mark>", html.escape(w.group()), "</mark>"]
            pos = w.end()
    out.append(html.escape(text[pos:end]))
    return ("… " if start > 0 else "") + "".join(out).strip() + (" …" if end < len(text) else "")


def _seen_by(actor: Actor, filt: RoomFilter) -> tuple[str, list[Any]]:
    """The rooms `r` the viewer sees under the tab/status filter: one SQL condition, its parameters."""
    visible, params = sql_predicate(actor)
    clauses, filter_params = filter_clauses(filt)
    return " AND ".join([visible, *clauses]), [*params, *filter_params]


def _contact_terms(q: str) -> tuple[str, str | None]:
    """(folded name query, phone digits) of a contact search; InvalidCommand when it has neither."""
    name = name_query(q) if has_words(q) else ""
    digits = phone_query(q)
    if not name and not digits:
        raise InvalidCommand("search text must contain letters or digits")
    return name, digits


def contact_group_terms(q: str, group: str) -> tuple[str, list[Any], str, list[Any]] | None:
    """(match SQL, its params, score SQL, its params) of one group of the contact ranking (see the
    module docstring); None when the query cannot match that group (no letters: no similar names)."""
    name, digits = _contact_terms(q)
    contains = _like_pattern(name) if name else ""
    phone = _like_pattern(digits) if digits else ""
    substring = (["r.search_name LIKE %s"] if name else []) + (["r.phone_digits LIKE %s"] if digits else [])
    substring_params = ([contains] if name else []) + ([phone] if digits else [])
    if group == "substring":
        score, score_params = "0::real", []
        if name:  # whole word(s) 4 > start of a word 3 > anywhere 2
            score = (
                "CASE WHEN ' ' || r.search_name || ' ' LIKE %s THEN 4"
                " WHEN ' ' || r.search_name LIKE %s THEN 3 WHEN r.search_name LIKE %s THEN 2 ELSE 0 END"
            )
            score_params = [f"% {contains[1:-1]} %", f"% {contains[1:]}", contains]
        if digits:  # phone digits 2.5
            score = f"GREATEST({score}, CASE WHEN r.phone_digits LIKE %s THEN 2.5 ELSE 0 END)"
            score_params.append(phone)
        return "(" + " OR ".join(substring) + ")", substring_params, score, score_params
    if group == "similar":
        if not any(c.isalpha() for c in name):  # a number (a phone, an order): similar digits are no match
            return None
        # Similar at the session's word-similarity threshold, and not in the substring group
        # (coalesce: a room without phone digits is no phone match).
        not_substring = "".join(f" AND NOT coalesce({c}, false)" for c in substring)
        return (f"(%s <%% r.search_name{not_substring})", [name, *substring_params],
                "word_similarity(%s, r.search_name)", [name])
    raise ValueError(f"unknown contact search group {group!r}")


def ranked_in_full(q: str, group: str) -> bool:
    """Whether a group may be ranked over all its matches (rule 3): the substring group of a query
    whose every pattern (name, phone digits) the trigram index can look up."""
    if group != "substring":
        return False
    name, digits = _contact_terms(q)
    return all(len(p) >= TRIGRAM for p in (name, digits) if p)


def contact_window_edge_sql(org_id: str, window: int) -> tuple[str, list[Any]]:
    """(updated_at, id) of the organization's `window`-th newest room: the oldest of its newest
    `window` rooms (none when it has fewer), an index-only scan of `rooms_by_activity`; and `rooms`,
    how many rooms the organization has (its counters)."""
    rooms, rooms_params = _org_room_count_sql(org_id)
    return (
        f"SELECT updated_at, id, ({rooms}) AS rooms FROM rooms WHERE org_id = %s"
        " ORDER BY updated_at DESC, id DESC OFFSET %s LIMIT 1",
        [*rooms_params, org_id, window - 1],
    )


def contact_group_sql(
    actor: Actor, filt: RoomFilter, q: str, group: str, *, limit: int,
    cap: int | None = None, since: tuple[Any, Any] | None = None,
) -> tuple[str, list[Any]] | None:
    """The first `limit` rooms of one group of the contact ranking, best first, each with
    `_matches`: how many rooms were ranked.

    - `cap`: the organization's matches (from the trigram GIN indexes, whoever may see them), at
      most cap + 1 of them read, in no particular order, and the first `limit` of those the viewer
      sees, ranked; `_matches` is how many were read: cap + 1 means the group has more than `cap`
      matches and this is not its ranking. Always at least one row: one whose columns are null
      when the viewer sees none of them (its `_matches` still says how many there were);
    - `since` (updated_at, id), from `contact_window_edge_sql`: the matches among the rooms at or
      after that position in activity order (the organization's newest CONTACT_WINDOW rooms), as
      the ranking of a group not ranked in full (rule 3). The planner may AND the trigram index's
      bitmap with a range of `rooms_by_activity`, or walk that range: only the window's rooms read;
    - neither: every match (unbounded: the reference the bounded forms are tested against).
    None when the query cannot match the group.
    """
    terms = contact_group_terms(q, group)
    if terms is None:
        return None
    match, match_params, score, score_params = terms
    seen, seen_params = _seen_by(actor, filt)
    where = f"{seen} AND {match}"
    where_params: list[Any] = [*seen_params, *match_params]
    if since is not None:
        where += " AND r.updated_at >= %s AND (r.updated_at, r.id) >= (%s, %s)"
        where_params += [since[0], since[0], since[1]]
    order = " ORDER BY _score DESC, r.updated_at DESC, r.id DESC LIMIT %s"
    if cap is None:
        sql = (f"SELECT r.*, now() AS _now, {score} AS _score, count(*) OVER () AS _matches"
               f" FROM (SELECT * FROM rooms r WHERE {where}) r{order}")
        return sql, [*score_params, *where_params, limit]
    # The LIMIT is outside the CTE that finds the matches: with it inside, the planner expects
    # cap + 1 matches early in a sequential scan of the rooms and reads the table instead of the
    # trigram index (720 ms over 1M rooms for a name that matched none of the viewer's rooms). A
    # CTE is planned for all its rows and read only as far as the LIMIT pulls it.
    sql = (
        f"WITH every_match AS MATERIALIZED (SELECT * FROM rooms r WHERE r.org_id = %s AND {match}),"
        " capped AS (SELECT * FROM every_match LIMIT %s),"
        f" ranked AS (SELECT r.*, {score} AS _score FROM capped r WHERE {seen}{order})"
        " SELECT r.*, now() AS _now, (SELECT count(*) FROM capped) AS _matches FROM (SELECT 1) one"
        " LEFT JOIN ranked r ON true ORDER BY r._score DESC, r.updated_at DESC, r.id DESC"
    )
    return sql, [actor.org_id, *match_params, cap + 1, *score_params, *seen_params, limit]


def contact_whole_word_sql(
    actor: Actor, filt: RoomFilter, q: str, *, limit: int, offset: int, window: int
) -> tuple[str, list[Any]] | None:
    """The first rows of the contact ranking when its top tier fills them: rooms whose
    name or handle holds the query as whole word(s) (score 4, the highest any row gets), newest
    first, among the organization's newest `window` rooms (read in activity order, so a common
    name costs a short walk instead of ranking every match). Exact when it returns `limit` rows,
    whatever `window` is: every room outside it is older than every room in it, so none ranks
    before them. None when the query has no words."""
    name = name_query(q) if has_words(q) else ""
    if not name:
        return None
    where, seen_params = _seen_by(actor, filt)
    whole_word = f"% {_like_pattern(name)[1:-1]} %"
    sql = (
        "SELECT r.*, now() AS _now, 4::real AS _score FROM (SELECT * FROM rooms WHERE org_id = %s"
        " ORDER BY updated_at DESC, id DESC LIMIT %s) r"
        f" WHERE {where} AND ' ' || r.search_name || ' ' LIKE %s"
        " ORDER BY r.updated_at DESC, r.id DESC LIMIT %s OFFSET %s"
    )
    return sql, [actor.org_id, window, *seen_params, whole_word, limit, offset]


# The query's words as prefix terms, split by the same parser as the messages ('INV-2041' →
# 'inv':* & '-2041':*). Computed first, so the search query gets it as a constant the planner
# can estimate (a value computed inside the query would hide its selectivity).
TSQUERY_SQL = (
    "SELECT coalesce(string_agg(quote_literal(lexeme) || ':*', ' & '), '') AS tsq,"
    " coalesce(array_agg(lexeme), '{}') AS lexemes,"
    " coalesce(array_agg(quote_literal(lexeme) || ':*'), '{}') AS terms FROM unnest(to_tsvector('simple', %s))"
)


def conversation_search_sql(
    actor: Actor, filt: RoomFilter, tsquery: str, *, matches: int, window: int | None = None
) -> tuple[str, list[Any]]:
    """The newest `matches` matching messages of rooms the viewer may see, newest first: among the
    organization's newest `window` messages (read in order; the LIMIT of the fenced subquery keeps
    it an ordered index scan, which stops as soon as the outer LIMIT is met), or among all matches
    from the GIN index (window None).

    `tsquery`: the text of a `to_tsquery('simple', …)`, from TSQUERY_SQL.
    """
    where, seen_params = _seen_by(actor, filt)
    if window is not None:
        source = (
            "(SELECT id, room_id, recorded_at, text_tsv FROM messages WHERE org_id = %s"
            " ORDER BY recorded_at DESC, id DESC LIMIT %s) m WHERE m.text_tsv @@ to_tsquery('simple', %s)"
        )
        source_params: list[Any] = [actor.org_id, window, tsquery]
    else:
        source = (
            "(SELECT id, room_id, recorded_at FROM messages WHERE org_id = %s"
            " AND text_tsv @@ to_tsquery('simple', %s) OFFSET 0) m WHERE true"  # OFFSET 0: all matches first
        )
        source_params = [actor.org_id, tsquery]
    sql = (  # OFFSET 0 keeps the EXISTS a per-candidate probe of rooms_pkey, never a join over all rooms
        f"SELECT m.room_id, m.id AS message_id FROM {source}"
        f" AND EXISTS (SELECT 1 FROM rooms r WHERE r.id = m.room_id AND {where} OFFSET 0)"
        " ORDER BY m.recorded_at DESC, m.id DESC LIMIT %s"
    )
    return sql, [*source_params, *seen_params, matches]


def rooms_first_sql(actor: Actor, filt: RoomFilter, tsquery: str, *, after: tuple[Any, Any] | None,
                    rooms: int) -> tuple[str, list[Any]]:
    """The next `rooms` rooms (visible, filtered) in activity order after `after` (updated_at, id),
    each with its latest matching message (`message_id`, `recorded_at`; NULL when none matches)."""
    where, seen_params = _seen_by(actor, filt)
    keyset, keyset_params = "", []
    if after is not None:
        keyset, keyset_params = " AND r.updated_at <= %s AND (r.updated_at, r.id) < (%s, %s::uuid)", [after[0], *after]
    sql = (
        "SELECT r.id AS room_id, r.updated_at, m.id AS message_id, m.recorded_at FROM ("
        f" SELECT r.id, r.updated_at FROM rooms r WHERE {where}{keyset}"
        " ORDER BY r.updated_at DESC, r.id DESC LIMIT %s) r LEFT JOIN LATERAL ("
        " SELECT m.id, m.recorded_at FROM messages m WHERE m.room_id = r.id"
        # IS TRUE: not an index condition, so each room's few messages are read by room_id and
        # filtered, never through the GIN index (per room, that collected every posting of 'inv':*)
        " AND (m.text_tsv @@ to_tsquery('simple', %s)) IS TRUE ORDER BY m.recorded_at DESC, m.id DESC LIMIT 1) m"
        " ON true ORDER BY r.updated_at DESC, r.id DESC"
    )
    return sql, [*seen_params, *keyset_params, rooms, tsquery]


def recent_matches_sql(org_id: str, tsquery: str, terms: Sequence[str], *, window: int) -> tuple[str, list[Any]]:
    """How many of the organization's newest `window` messages match the query (`n`) and each of
    its terms (`per_term`, in order): how common the words are, and which is the rarest; with how
    many messages the window held (`seen`) and the store holds (`stored`, the planner's estimate)."""
    each = ", ".join("count(*) FILTER (WHERE m.text_tsv @@ to_tsquery('simple', %s))" for _ in terms)
    return (
        f"SELECT count(*) FILTER (WHERE m.text_tsv @@ to_tsquery('simple', %s)) AS n,"
        f" ARRAY[{each}]::bigint[] AS per_term, count(*) AS seen,"
        " (SELECT reltuples::bigint FROM pg_class WHERE oid = 'messages'::regclass) AS stored"
        " FROM (SELECT text_tsv FROM messages WHERE org_id = %s ORDER BY recorded_at DESC, id DESC LIMIT %s) m",
        [tsquery, *terms, org_id, window],
    )


def likely_matches(recent: int, seen: int, stored: int, *, window: int) -> float:
    """Matches in the whole store (or organization), from `recent` matches among the `seen` newest
    rows (messages, rooms): exact when those were all of them (fewer than `window`), else in
    proportion to `stored`, how many rows there are in all. For messages that is the planner's
    estimate of the table (every organization's: an over-estimate, which only makes a term look
    less rare; -1 or 0 when never analysed: the window's rate is all there is)."""
    if seen < window:
        return float(recent)
    return recent * max(stored, seen) / seen


def rarest_term(terms: Sequence[str], recent: Sequence[int]) -> str:
    """The term to read from the GIN index: the one with the fewest recent matches, the longest of
    those (a longer prefix has fewer words under it). A prefix term's GIN scan collects every entry
    under it ('inv':* reads the postings of "inv" and "invoice"), so the others are only rechecked."""
    return min(zip(terms, recent, strict=True), key=lambda t: (t[1], -len(t[0])))[0]


def rare_matches_sql(
    actor: Actor, filt: RoomFilter, tsquery: str, term: str, *, cap: int, matches: int
) -> tuple[str, list[Any]]:
    """The newest `matches` messages matching the whole `tsquery` in rooms the viewer may see, as
    (room_id, message_id), among the organization's messages holding `term` (from the GIN index;
    the other terms are rechecked on those rows), of which at most cap + 1 are read, in no
    particular order, then sorted newest first; rooms are probed in that order until `matches`.
    Each row has `_read`, how many were read: cap + 1 means the term has more than `cap` matches
    and these are not the newest (a row with null ids when none matched, so `_read` is there)."""
    where, seen_params = _seen_by(actor, filt)
    # The LIMIT is outside the CTE that reads the index: with it inside, the planner (which takes
    # any prefix term for 2% of the rows) expects cap + 1 matches within the first 1/(0.02 * n) of
    # a sequential scan and reads the table instead of the index: 2 s for a code found 4 times in
    # 10M messages. A CTE is planned for all its rows and read only as far as the LIMIT pulls it.
    sql = (
        "WITH every_match AS MATERIALIZED (SELECT id, room_id, recorded_at, text_tsv FROM messages"
        " WHERE org_id = %s AND text_tsv @@ to_tsquery('simple', %s)),"
        " c AS (SELECT * FROM every_match LIMIT %s),"
        " h AS (SELECT m.room_id, m.id, m.recorded_at"
        " FROM (SELECT * FROM c ORDER BY recorded_at DESC, id DESC OFFSET 0) m"
        " WHERE m.text_tsv @@ to_tsquery('simple', %s)"
        f" AND EXISTS (SELECT 1 FROM rooms r WHERE r.id = m.room_id AND {where} OFFSET 0) LIMIT %s)"
        " SELECT (SELECT count(*) FROM c) AS _read, h.room_id, h.id AS message_id FROM (SELECT 1) one"
        " LEFT JOIN h ON true ORDER BY h.recorded_at DESC, h.id DESC"
    )
    return sql, [actor.org_id, term, cap + 1, tsquery, *seen_params, matches]


def filtered_room_count_sql(actor: Actor, filt: RoomFilter) -> tuple[str, list[Any]]:
    """How many rooms the viewer sees under a tab/status filter (`n`), and the organization has
    (`org`): lookups of the counters."""
    seen, seen_params = _room_count_sql(actor.org_id, counter_keys(actor), filt)
    org, org_params = _org_room_count_sql(actor.org_id)
    return f"SELECT ({seen}) AS n, ({org}) AS org", [*seen_params, *org_params]


def _org_room_count_sql(org_id: str) -> tuple[str, list[Any]]:
    """Every room of the organization, as `n` (its counters' ALL key, no filter)."""
    return _room_count_sql(org_id, [ALL], RoomFilter())


def _room_count_sql(org_id: str, keys: Sequence[str], filt: RoomFilter) -> tuple[str, list[Any]]:
    """The rooms of the organization under a tab/status filter that the counter keys `keys` see
    (`ALL`: every room), as `n`; also usable as a scalar subquery."""
    sql = "SELECT coalesce(sum(rooms), 0) AS n FROM counters WHERE org_id = %s AND assignee = ANY(%s)"
    params: list[Any] = [org_id, list(keys)]
    if filt.tab:
        sql += " AND tab = %s"
        params.append(filt.tab)
    if filt.status != "all":
        sql += " AND status = %s"
        params.append(filt.status)
    return sql, params


def conversation_hits_sql(hits: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
    """Rooms and matching message texts of one page of (room id, message id) hits, in that order."""
    sql = (
        "SELECT r.*, now() AS _now, h.message_id AS _match_id, m.text AS _match_text"
        " FROM unnest(%s::uuid[], %s::uuid[]) WITH ORDINALITY AS h(room_id, message_id, n)"
        " JOIN rooms r ON r.id = h.room_id JOIN messages m ON m.id = h.message_id ORDER BY h.n"
    )
    return sql, [[h[0] for h in hits], [h[1] for h in hits]]


class RoomSearch(ReadModelReader):
    def tsquery(self, q: str) -> tuple[str, list[str], list[str]]:
        """(tsquery text, lexemes, one prefix term per lexeme) of a conversation search."""
        row = self._fetch(TSQUERY_SQL, [q])[0] if has_words(q) else {"tsq": ""}
        if not row["tsq"]:
            raise InvalidCommand("search text must contain at least one word")
        return str(row["tsq"]), list(row["lexemes"]), list(row["terms"])

    def _hits(
        self, actor: Actor, filt: RoomFilter, tsquery: str, wanted: int, *, window: int | None
    ) -> dict[str, str]:
        """room id -> its latest matching message, newest first; at least `wanted` rooms if there are."""
        matches = min(2 * wanted, MAX_MATCHES)  # a walk stops after this many matches: few, grown when short
        while True:
            rows = self._fetch(*conversation_search_sql(actor, filt, tsquery, matches=matches, window=window))
            hits: dict[str, str] = {}
            for row in rows:
                hits.setdefault(str(row["room_id"]), str(row["message_id"]))
            if len(hits) >= wanted or len(rows) < matches or matches >= MAX_MATCHES:
                return hits
            matches = min(matches * 4, MAX_MATCHES)

    def _rare_hits(
        self, actor: Actor, filt: RoomFilter, tsquery: str, term: str, wanted: int
    ) -> dict[str, str] | None:
        """As `_hits`, from every match of `term` when it has at most RARE_MATCHES; else None."""
        matches = 2 * wanted
        while True:
            rows = self._fetch(*rare_matches_sql(actor, filt, tsquery, term, cap=RARE_MATCHES, matches=matches))
            if int(rows[0]["_read"]) > RARE_MATCHES:
                return None
            hits: dict[str, str] = {}
            for row in rows:
                if row["room_id"] is not None:
                    hits.setdefault(str(row["room_id"]), str(row["message_id"]))
            found = sum(1 for row in rows if row["room_id"] is not None)
            if len(hits) >= wanted or found < matches or matches > RARE_MATCHES:
                return hits
            matches *= 4

    def _contact_group(
        self, actor: Actor, filt: RoomFilter, q: str, group: str, limit: int, since: tuple[Any, Any] | None,
        org_rooms: int,
    ) -> list[dict[str, Any]]:
        """The first `limit` rooms of one contact group, ranked as rule 3 of the module docstring
        says: among the newest CONTACT_WINDOW rooms (`since`; None: the organization has no more
        rooms than that, all of them are the window), or over all its matches."""
        newest = contact_group_sql(actor, filt, q, group, limit=limit, since=since)
        if newest is None:
            return []
        rows = self._fetch(*newest)  # the window first: bounded, and enough when it holds many matches
        if since is None or not ranked_in_full(q, group):
            return rows
        in_window = int(rows[0]["_matches"]) if rows else 0  # the viewer's: at most the organization's
        if in_window > CONTACT_MAX_MATCHES or likely_matches(
                in_window, CONTACT_WINDOW, org_rooms, window=CONTACT_WINDOW) > 2 * CONTACT_MAX_MATCHES:
            return rows
        full = contact_group_sql(actor, filt, q, group, limit=limit, cap=CONTACT_MAX_MATCHES)
        assert full is not None
        every = self._fetch(*full)
        if int(every[0]["_matches"]) > CONTACT_MAX_MATCHES:
            return rows
        return [r for r in every if r["id"] is not None]

    def by_contact(self, actor: Actor, filt: RoomFilter, q: str, *, limit: int, cursor: str | None) -> dict[str, Any]:
        offset = _offset(cursor)
        top = contact_whole_word_sql(actor, filt, q, limit=limit + 1, offset=offset, window=WHOLE_WORD_WALK)
        rows = self._fetch(*top) if top is not None else []
        if len(rows) <= limit:  # the top tier of the newest rooms does not fill the page: rank group by group
            wanted = offset + limit + 1
            edge = self._fetch(*contact_window_edge_sql(actor.org_id, CONTACT_WINDOW))
            since = (edge[0]["updated_at"], edge[0]["id"]) if edge else None
            org_rooms = int(edge[0]["rooms"]) if edge else 0
            ranked: list[dict[str, Any]] = []
            for group in CONTACT_GROUPS:
                if len(ranked) >= wanted:
                    break
                ranked += self._contact_group(actor, filt, q, group, wanted - len(ranked), since, org_rooms)
            rows = ranked[offset:]
        page = rows[:limit]
        return {"items": [room_json(r, r["_now"]) for r in page], "next_cursor": _next_cursor(rows, limit, offset)}

    def _rooms_first(self, actor: Actor, filt: RoomFilter, tsquery: str, wanted: int, *,
                     budget: int) -> dict[str, str] | None:
        """The `wanted` rooms whose latest match is newest (room id → message id, in rank order),
        reading rooms in activity order, each with its latest match, until no room left can rank:
        a room's activity (`updated_at`) is its newest message's recorded time, so none of its
        matches is newer. Exact, ties included (a room left out has only matches older than the
        last one kept). A common word stops after a few dozen rooms of thousands; a rarer one
        reads more, in growing chunks, up to `budget` rooms: None when rooms beyond it could still
        rank. Each chunk is its own snapshot, as each query of a search is: a room that gets a
        message between two of them can be missed by this page."""
        best: list[tuple[Any, str, str]] = []  # (recorded_at, message id, room id), newest first
        after: tuple[Any, Any] | None = None
        chunk, read = max(2 * wanted, ROOMS_FIRST_CHUNK), 0
        while read < budget:
            chunk = min(chunk, budget - read)
            rows = self._fetch(*rooms_first_sql(actor, filt, tsquery, after=after, rooms=chunk))
            read += len(rows)
            best += [(r["recorded_at"], str(r["message_id"]), str(r["room_id"])) for r in rows
                     if r["message_id"] is not None]
            best.sort(reverse=True)  # as the search orders hits: recorded_at DESC, id DESC (uuid text
            del best[wanted:]        # orders as the uuid's bytes)
            if len(rows) < chunk:
                break  # every room read
            after = (rows[-1]["updated_at"], rows[-1]["room_id"])
            if len(best) == wanted and best[-1][0] > after[0]:
                break  # every room left has only older matches
            chunk *= 4
        else:
            return None
        return {room: message for _, message, room in best}

    def _room_by_room_budget(self, actor: Actor, filt: RoomFilter) -> int:
        """Rooms to read one by one at most: all when the filter leaves few (the counters say how
        many; one more, to see the end); a probe that a common or not too rare word ends when it
        leaves at most a fifth of the organization's rooms (the walk would pass over most of the
        matches it reads); else none (the walk stops as soon as the newest matches fill the page)."""
        counts = self._fetch(*filtered_room_count_sql(actor, filt))[0]
        rooms, org = int(counts["n"]), int(counts["org"])
        if rooms <= ROOMS_FIRST_LIMIT:
            return rooms + 1
        return ROOMS_FIRST_PROBE if rooms * ROOMS_FIRST_PROBE_SHARE <= org else 0

    def by_conversation(
        self, actor: Actor, filt: RoomFilter, q: str, *, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        offset = _offset(cursor)
        tsquery, lexemes, terms = self.tsquery(q)
        wanted = offset + limit + 1
        hits = self._hits(actor, filt, tsquery, wanted, window=RECENT_WINDOW)
        if len(hits) < wanted:
            recent = self._fetch(*recent_matches_sql(actor.org_id, tsquery, terms, window=RECENT_WINDOW))[0]
            per_term = [int(n) for n in recent["per_term"]]
            term = rarest_term(terms, per_term)
            in_window = per_term[terms.index(term)]
            seen, stored = int(recent["seen"]), int(recent["stored"] or 0)
            may_be_rare = likely_matches(in_window, seen, stored, window=RECENT_WINDOW) <= 2 * RARE_MATCHES
            rare_first = may_be_rare and in_window < COMMON_MATCHES
            exact = self._rare_hits(actor, filt, tsquery, term, wanted) if rare_first else None
            if exact is not None:  # every match of the rarest term read: exact
                hits = exact
            elif (by_room := self._rooms_first(actor, filt, tsquery, wanted,
                                               budget=self._room_by_room_budget(actor, filt))) is not None:
                hits = by_room
            else:
                hits = self._hits(actor, filt, tsquery, wanted, window=WALK_WINDOW)
                if len(hits) < wanted and may_be_rare and not rare_first:
                    exact = self._rare_hits(actor, filt, tsquery, term, wanted)
                    hits = exact if exact is not None else hits
        chosen = list(hits.items())[offset:wanted]
        rows = self._fetch(*conversation_hits_sql(chosen)) if chosen else []
        page = rows[:limit]
        items = [
            {**room_json(r, r["_now"]),
             "match": {"message_id": str(r["_match_id"]), "snippet": snippet(r["_match_text"], lexemes)}}
            for r in page
        ]
        return {"items": items, "next_cursor": _next_cursor(rows, limit, offset)}
