"""GET /v1/search: by contact (name, phone, handle) and by conversation (message words), index-backed."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.dataset import TracedSearch
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.adapters.postgres import configure_read_session, conninfo, use_search_path
from inbox.adapters.read_models.queries import RoomFilter
from inbox.adapters.read_models.search import (
    CONTACT_GROUPS, CONTACT_WINDOW, ROOMS_FIRST_CHUNK, ROOMS_FIRST_PROBE, contact_group_sql, contact_window_edge_sql,
    conversation_search_sql, rare_matches_sql,
)
from tests.integration.inbox_helpers import Inbox, running_inbox

pytestmark = pytest.mark.integration


@pytest.fixture
def inbox(db_settings: Settings) -> Iterator[Inbox]:
    with running_inbox(db_settings) as i:
        yield i


@pytest.fixture
def people(inbox: Inbox) -> dict[str, str]:
    rooms = {
        "budi": inbox.inbound("whatsapp_cloud", "6281234567890", name="Budí Santoso",
                              text="Halo, pesanan INV-2041 saya belum sampai")["room_id"],
        "siti": inbox.inbound("whatsapp_cloud", "6285711112222", name="Siti Rahayu",
                              text="Mau tanya ongkir ke Surabaya")["room_id"],
        "agus": inbox.inbound("instagram", "igsid-77", name="Agustina Dewi", handle="@agustina.shop",
                              text="kak, warna merah masih ready?")["room_id"],
        "rina": inbox.inbound("facebook_messenger", "psid-9", name="Rina", phone="0813-9999-0000",
                              text="refund saya kapan diproses")["room_id"],
        "comment": inbox.inbound("instagram_comment", "igsid-77", name="Agustina Dewi", handle="@agustina.shop",
                                 post="post-A", text="harga berapa kak? ready merah?")["room_id"],
    }
    inbox.project()
    return rooms


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["id"] for i in items]


# ---- by contact -------------------------------------------------------------------------------
@pytest.mark.parametrize("q", ["budi", "BUDI", "Budí", "santoso", "udi sant", "budi santoso"])
def test_contact_name_is_case_and_accent_insensitive_and_partial(inbox: Inbox, people: dict[str, str], q: str) -> None:
    assert ids(inbox.search(q)) == [people["budi"]]


@pytest.mark.parametrize("q", ["santso", "budi santosa", "siti rahyu"])
def test_contact_name_tolerates_typos(inbox: Inbox, people: dict[str, str], q: str) -> None:
    found = ids(inbox.search(q))
    assert found and found[0] == (people["siti"] if q.startswith("siti") else people["budi"])


@pytest.mark.parametrize("q", ["+62 812-3456-7890", "081234567890", "6281234567890", "0812 3456", "4567890", "812-3456"])
def test_phone_digits_match_in_any_common_format(inbox: Inbox, people: dict[str, str], q: str) -> None:
    assert ids(inbox.search(q)) == [people["budi"]]


def test_a_given_phone_number_is_searchable_on_other_channels(inbox: Inbox, people: dict[str, str]) -> None:
    assert ids(inbox.search("+62 813 9999 0000")) == [people["rina"]]


def test_a_number_finds_what_holds_it_never_similar_numbers(inbox: Inbox) -> None:
    """Digits are a phone or an order number: one digit off is another customer, not a typo."""
    shop = inbox.inbound("instagram", "igsid-5", name="Toko 20417", handle="@toko20417")["room_id"]
    inbox.project()
    assert ids(inbox.search("20417")) == ids(inbox.search("toko 2041")) == [shop]
    assert ids(inbox.search("20471")) == ids(inbox.search("02417")) == []
    assert ids(inbox.search("toko 20471")) == [shop]  # with letters: a typo of a name


@pytest.mark.parametrize("q", ["@agustina.shop", "agustina.shop", "AGUSTINA.SH"])
def test_handles_are_searchable_with_or_without_at_sign(inbox: Inbox, people: dict[str, str], q: str) -> None:
    assert set(ids(inbox.search(q))) == {people["agus"], people["comment"]}


def test_whole_words_rank_before_word_starts_before_substrings_before_typos(inbox: Inbox) -> None:
    substring = inbox.inbound("whatsapp_cloud", "62801", name="Abudin Ahmad")["room_id"]
    word_start = inbox.inbound("whatsapp_cloud", "62802", name="Andi Budiman")["room_id"]
    whole_word = inbox.inbound("whatsapp_cloud", "62803", name="Budi Santoso")["room_id"]
    typo = inbox.inbound("whatsapp_cloud", "62804", name="Budy Hartono")["room_id"]
    newest_whole_word = inbox.inbound("whatsapp_cloud", "62805", name="Pak Budi")["room_id"]
    inbox.project()

    assert ids(inbox.search("budi")) == [newest_whole_word, whole_word, word_start, substring, typo]


def full_ranking(settings: Settings, actor: Actor, q: str, filt: RoomFilter | None = None,
                 similar_among: int | None = None) -> list[str]:
    """Every match ranked, unbounded: the substring group, then the similar group (the reference);
    `similar_among`: the similar group's matches among the organization's newest that many rooms."""
    ranked: list[str] = []
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        use_search_path(conn, settings.db_schema)  # and the typo threshold, as the API's sessions
        cur = conn.cursor(row_factory=dict_row)
        newest = {str(r["id"]) for r in cur.execute(
            "SELECT id FROM rooms WHERE org_id = %s ORDER BY updated_at DESC, id DESC LIMIT %s",
            (actor.org_id, similar_among)).fetchall()}
        for group in CONTACT_GROUPS:
            query = contact_group_sql(actor, filt or RoomFilter(), q, group, limit=1000)
            found = [str(r["id"]) for r in cur.execute(*query).fetchall()] if query else []
            ranked += [i for i in found if i in newest] if group == "similar" else found
    return ranked


def all_pages(inbox: Inbox, q: str, limit: int) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        page = inbox.get("/v1/search", q=q, limit=limit, **({"cursor": cursor} if cursor else {}))
        found += ids(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.parametrize("walk, window", [(1, 1), (4, 4), (1000, 1000), (1, 4), (2, 1000)])
def test_contact_search_pages_equal_the_full_ranking_whatever_the_whole_word_window(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch, walk: int, window: int
) -> None:
    """The whole-word shortcut (`contact_whole_word_sql`, the newest WHOLE_WORD_WALK rooms) answers
    exactly the pages the ranking gives, or defers to it (the substring group within its bound,
    ranked in full; the similar group among the window's rooms), whether its walk is shorter than
    the window the groups are ranked in, or as long."""
    monkeypatch.setattr("inbox.adapters.read_models.search.WHOLE_WORD_WALK", walk)
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", window)
    names = ["Budi Santoso", "Andi Budiman", "Pak Budi", "Abudin", "Budi", "Budy Hartono", "Budi Wijaya",
             "Siti", "Budi Lestari", "Ibu Budiarti", "Budi Hakim"]
    for i, name in enumerate(names):
        inbox.inbound("whatsapp_cloud", f"62812000{i:03d}", name=name)
    inbox.project()
    ranked = full_ranking(inbox.settings, Actor("admin1", "org1", Role.ADMIN), "budi", similar_among=window)
    # all but Siti: whole words, word starts, substrings, and the typo when it is among the window's rooms
    assert len(ranked) == (10 if window > 5 else 9)

    for limit in (1, 2, 3, 5):
        assert all_pages(inbox, "budi", limit) == ranked, (limit, walk, window)


def test_similar_names_rank_by_similarity_then_activity(inbox: Inbox) -> None:
    close_old = inbox.inbound("whatsapp_cloud", "62821", name="Santoso")["room_id"]
    far = inbox.inbound("whatsapp_cloud", "62822", name="Santo Wirawan")["room_id"]
    close_new = inbox.inbound("whatsapp_cloud", "62823", name="Budi Santoso")["room_id"]
    inbox.project()

    assert ids(inbox.search("santosso")) == [close_new, close_old, far]


@pytest.mark.parametrize("bound, found", [(4, "all four, the oldest too"), (3, "the newest three rooms only")])
def test_a_group_with_more_matches_than_the_bound_is_ranked_among_the_newest_rooms_only(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch, bound: int, found: str
) -> None:
    """Bounded work: a substring group the organization has at most CONTACT_MAX_MATCHES matches of
    is ranked in full; beyond, only its matches among the organization's newest CONTACT_WINDOW rooms."""
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_MAX_MATCHES", bound)
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", 3)
    rooms = [inbox.inbound("whatsapp_cloud", f"6283{i}", name=f"Wibowo {i}")["room_id"] for i in range(4)]
    inbox.project()

    result = ids(inbox.search("wibow"))  # the start of a word: the substring group

    if bound == 4:  # four rooms, at most four: every one ranked (newest first: equally good)
        assert result == rooms[::-1]
    else:  # more than three: only those among the newest three rooms of the organization
        assert result == rooms[:0:-1]


def test_the_bound_counts_the_organization_s_matches_whoever_may_see_them(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's search reads no more matches than an admin's: a name the organization has more
    than CONTACT_MAX_MATCHES rooms of is ranked among the newest rooms, even when the agent sees
    fewer (counting only the agent's would mean reading every other one)."""
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_MAX_MATCHES", 2)
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", 2)
    mine = inbox.inbound("whatsapp_cloud", "62850", name="Wibowo Lama")["room_id"]
    inbox.project()
    inbox.post(f"/v1/rooms/{mine}/assign", inbox.headers("supervisor", "spv1"), {"agent_id": "agent1"})
    for i in range(1, 3):
        inbox.inbound("whatsapp_cloud", f"6285{i}0", name=f"Siti {i}")
    inbox.project()
    agent1 = inbox.headers("agent", "agent1")
    # one match, older than the newest two rooms: ranked in full
    assert ids(inbox.get("/v1/search", agent1, q="wibow")["items"]) == [mine]

    for i in range(1, 4):
        others = inbox.inbound("whatsapp_cloud", f"6285{i}", name=f"Wibowo {i}")["room_id"]
        inbox.post(f"/v1/rooms/{others}/assign", inbox.headers("supervisor", "spv1"), {"agent_id": "agent2"})
    inbox.project()

    assert ids(inbox.get("/v1/search", agent1, q="wibow")["items"]) == []  # four: only the newest two rooms


def test_a_typo_and_a_query_shorter_than_a_trigram_are_ranked_among_the_newest_rooms_only(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However few their matches: similarity is a lossy lookup of the trigram index (every
    candidate read to find a few), and one or two characters have no trigram to look up."""
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", 2)
    old = inbox.inbound("whatsapp_cloud", "62860", name="Wibowo Xq")["room_id"]
    for i in range(1, 3):
        inbox.inbound("whatsapp_cloud", f"6286{i}", name=f"Siti {i}")
    inbox.project()

    assert ids(inbox.search("wiboo")) == []  # a typo of a room outside the newest two
    assert ids(inbox.search("xq")) == []
    assert ids(inbox.search("wibowo x")) == [old]  # a substring of 8 characters: ranked in full
    inbox.inbound("whatsapp_cloud", "62860", name="Wibowo Xq", text="again")  # among the newest rooms again
    inbox.project()
    assert ids(inbox.search("wiboo")) == ids(inbox.search("xq")) == [old]


def test_a_common_typo_group_does_not_hide_an_old_exact_match(inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The groups are bounded one by one: many similar names never push a substring match out."""
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_MAX_MATCHES", 2)
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", 2)
    exact = inbox.inbound("whatsapp_cloud", "62840", name="Budi Santoso")["room_id"]
    similar = [inbox.inbound("whatsapp_cloud", f"6284{i}", name=f"Agus Santoso {i}")["room_id"] for i in range(1, 5)]
    inbox.project()

    assert ids(inbox.search("budi santoso")) == [exact, similar[3], similar[2]]


def test_contact_search_respects_tab_and_status(inbox: Inbox, people: dict[str, str]) -> None:
    assert ids(inbox.search("agustina", tab="comments")) == [people["comment"]]
    assert ids(inbox.search("agustina", tab="messages")) == [people["agus"]]
    inbox.post(f"/v1/rooms/{people['agus']}/resolve", inbox.headers("supervisor", "spv1"))
    inbox.project()
    assert ids(inbox.search("agustina", status="resolved")) == [people["agus"]]
    assert ids(inbox.search("agustina", status="unassigned")) == [people["comment"]]


def test_unrelated_text_finds_nothing(inbox: Inbox, people: dict[str, str]) -> None:
    assert inbox.search("zulkifli") == []
    assert inbox.search("99999999") == []


def test_search_text_must_have_letters_or_digits(inbox: Inbox) -> None:
    r = inbox.client.get("/v1/search", headers=inbox.admin, params={"q": "!!!"})
    assert r.status_code == 422
    assert inbox.client.get("/v1/search", headers=inbox.admin, params={"q": ""}).status_code == 422


def test_search_pages_with_a_cursor(inbox: Inbox) -> None:
    made = {inbox.inbound("whatsapp_cloud", f"62811{i}", name=f"Dewi {i}")["room_id"] for i in range(5)}
    inbox.project()
    first = inbox.get("/v1/search", q="dewi", limit=3)
    second = inbox.get("/v1/search", q="dewi", limit=3, cursor=first["next_cursor"])
    assert second["next_cursor"] is None
    assert set(ids(first["items"])) | set(ids(second["items"])) == made
    assert len(first["items"]) + len(second["items"]) == 5


# ---- by conversation ---------------------------------------------------------------------------
def test_conversation_search_finds_words_with_snippet_and_message_id(inbox: Inbox, people: dict[str, str]) -> None:
    [hit] = inbox.search("pesanan belum", by="conversation")

    assert hit["id"] == people["budi"]
    history = inbox.get(f"/v1/rooms/{people['budi']}/messages")["items"]
    assert hit["match"]["message_id"] == history[0]["id"]
    assert "<mark>pesanan</mark>" in hit["match"]["snippet"] and "<mark>belum</mark>" in hit["match"]["snippet"]


def test_conversation_search_matches_word_prefixes_and_codes(inbox: Inbox, people: dict[str, str]) -> None:
    assert ids(inbox.search("pesan", by="conversation")) == [people["budi"]]
    assert ids(inbox.search("INV-2041", by="conversation")) == [people["budi"]]
    assert ids(inbox.search("surabaya", by="conversation")) == [people["siti"]]


def test_conversation_hit_is_the_rooms_latest_matching_message(inbox: Inbox, people: dict[str, str]) -> None:
    inbox.post(f"/v1/rooms/{people['siti']}/messages", inbox.admin, {"text": "Ongkir ke Surabaya 15 ribu kak"})
    inbox.inbound("whatsapp_cloud", "6285711112222", text="oke terima kasih")
    inbox.project()
    [hit] = inbox.search("surabaya", by="conversation")
    history = inbox.get(f"/v1/rooms/{people['siti']}/messages")["items"]
    assert hit["match"]["message_id"] == history[1]["id"]  # the reply, not the newer unrelated message
    assert hit["match"]["snippet"].startswith("Ongkir ke <mark>Surabaya</mark>")


def test_matches_older_than_the_recent_window_are_found(inbox: Inbox, people: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inbox.adapters.read_models.search.RECENT_WINDOW", 3)  # the first phase sees the newest 3 messages
    for i in range(5):
        inbox.inbound("whatsapp_cloud", f"62855{i}", text=f"unrelated {i}")
    inbox.project()

    # GIN bitmap; a walk that finds enough; a walk that does not (then the bitmap); the rooms one by one
    for rooms_first, common, walk in ((0, 1000, 0), (0, 0, 1000), (0, 0, 5), (1000, 1000, 0)):
        monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_LIMIT", rooms_first)
        monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_PROBE", rooms_first)
        monkeypatch.setattr("inbox.adapters.read_models.search.COMMON_MATCHES", common)
        monkeypatch.setattr("inbox.adapters.read_models.search.WALK_WINDOW", walk)
        assert ids(inbox.search("surabaya", by="conversation")) == [people["siti"]]
        assert ids(inbox.search("merah", by="conversation")) == [people["comment"], people["agus"]]
        assert ids(inbox.search("merah", by="conversation", tab="comments")) == [people["comment"]]


def test_a_chatty_room_does_not_hide_older_matches_in_other_rooms(inbox: Inbox, people: dict[str, str]) -> None:
    quiet = inbox.inbound("whatsapp_cloud", "62866", text="ada promo hari ini?")["room_id"]
    for i in range(260):  # more matches than the first round of candidates
        chatty = inbox.inbound("whatsapp_cloud", "62867", text=f"promo {i}")["room_id"]
    inbox.project()

    hits = inbox.search("promo", by="conversation")

    assert [h["id"] for h in hits] == [chatty, quiet]
    assert hits[0]["match"]["snippet"] == "<mark>promo</mark> 259"


def test_conversation_search_respects_tab_and_status(inbox: Inbox, people: dict[str, str]) -> None:
    assert set(ids(inbox.search("merah", by="conversation"))) == {people["agus"], people["comment"]}
    assert ids(inbox.search("merah", by="conversation", tab="comments")) == [people["comment"]]
    assert ids(inbox.search("merah", by="conversation", status="assigned")) == []


def test_snippets_are_html_escaped_around_the_marks(inbox: Inbox) -> None:
    inbox.inbound("whatsapp_cloud", "62877", text="harga <100rb & promo hari ini")
    inbox.project()
    [hit] = inbox.search("promo", by="conversation")
    assert hit["match"]["snippet"] == "harga &lt;100rb &amp; <mark>promo</mark> hari ini"


# ---- index-backed --------------------------------------------------------------------------------
def no_room_by_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversation search without its room-by-room phase (neither for few rooms nor as a probe):
    the walk and the rare-term read answer."""
    monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_LIMIT", 0)
    monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_PROBE", 0)


def add_crowd(settings: Settings, rooms: int, messages: int) -> None:
    """Many other rooms and messages of the same organization, so the planner's choices are realistic."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rooms (id, org_id, tab, channel, channel_account_id, channel_account, contact_id,"
            " contact_name, status, awaiting_reply, opened_at, updated_at, version, search_name, phone_digits)"
            " SELECT gen_random_uuid(), 'org1', 'messages', 'whatsapp_cloud', gen_random_uuid(), 'x', 'c' || i,"
            " md5(i::text), 'unassigned', true, now(), now() - i * interval '1 s', 2, md5(i::text),"
            " (870000000 + i * 7919)::text FROM generate_series(1, %s) i",
            (rooms,),
        )
        conn.execute(
            "INSERT INTO messages (id, room_id, org_id, seq, direction, text, sent_at, recorded_at)"
            " SELECT gen_random_uuid(), gen_random_uuid(), 'org1', 2, 'inbound', 'tanya ' || md5(i::text),"
            " now(), now() FROM generate_series(1, %s) i",
            (messages,),
        )
        conn.execute("ANALYZE rooms")
        conn.execute("ANALYZE messages")


def plan(settings: Settings, sql: str, params: list[Any]) -> str:
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        use_search_path(conn, settings.db_schema)
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_searches_are_answered_from_their_indexes(inbox: Inbox, people: dict[str, str]) -> None:
    add_crowd(inbox.settings, rooms=20_000, messages=40_000)
    admin = Actor("admin1", "org1", Role.ADMIN)
    agent = Actor("agent1", "org1", Role.AGENT)

    by_name = plan(inbox.settings, *contact_group_sql(admin, RoomFilter(), "budi", "substring", limit=20, cap=500))
    with psycopg.connect(conninfo(inbox.settings), autocommit=True) as conn:
        use_search_path(conn, inbox.settings.db_schema)
        edge = conn.execute(*contact_window_edge_sql("org1", CONTACT_WINDOW)).fetchone()
    by_typo = plan(inbox.settings, *contact_group_sql(admin, RoomFilter(), "santso", "similar", limit=20, since=edge))
    by_phone = plan(inbox.settings, *contact_group_sql(agent, RoomFilter(), "0812 3456", "substring", limit=20,
                                                       cap=500))
    by_text = plan(inbox.settings, *rare_matches_sql(admin, RoomFilter(), "'inv':* & '-2041':*", "'-2041':*",
                                                     cap=2000, matches=42))
    recent = plan(inbox.settings, *conversation_search_sql(admin, RoomFilter(), "'surabaya':*", matches=200,
                                                            window=5000))

    assert "rooms_search_name_trgm" in by_name and "Seq Scan" not in by_name
    # the window's matches: a range of rooms_by_activity, the trigram bitmap, or both ANDed
    assert "Seq Scan" not in by_typo and ("rooms_by_activity" in by_typo or "rooms_search_name_trgm" in by_typo)
    assert "rooms_phone_digits_trgm" in by_phone and "Seq Scan" not in by_phone
    assert "messages_text_search" in by_text and "Seq Scan on messages" not in by_text
    [index_cond] = [line for line in by_text.splitlines() if "Index Cond" in line and "text_tsv" in line]
    assert "-2041" in index_cond and "inv" not in index_cond  # the rarest term only: the rest rechecked
    assert "messages_by_org_recorded" in recent and "Seq Scan on messages" not in recent
    walk = plan(inbox.settings, *conversation_search_sql(admin, RoomFilter(status="resolved"), "'surabaya':*",
                                                          matches=200, window=20_000))
    assert "messages_by_org_recorded" in walk and "Seq Scan on messages" not in walk


def test_conversation_search_looks_at_a_bounded_number_of_candidate_matches(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded work whatever the query: beyond MAX_MATCHES candidates a walk stops looking."""
    monkeypatch.setattr("inbox.adapters.read_models.search.MAX_MATCHES", 10)
    no_room_by_room(monkeypatch)  # the candidate walk
    monkeypatch.setattr("inbox.adapters.read_models.search.COMMON_MATCHES", 1)  # "promo" is common: walked
    monkeypatch.setattr("inbox.adapters.read_models.search.RARE_MATCHES", 5)  # and too common to read whole
    old = inbox.inbound("whatsapp_cloud", "628100000001", text="promo lama")["room_id"]
    busy = ""
    for i in range(12):
        busy = inbox.inbound("whatsapp_cloud", "628100000002", text=f"promo {i}")["room_id"]
    inbox.project()

    assert ids(inbox.search("promo", by="conversation")) == [busy]
    assert ids(inbox.search("lama", by="conversation")) == [old]  # within the bound when matches are few


@pytest.mark.parametrize("bound", [13, 12])
def test_a_rare_word_is_read_whole_up_to_RARE_MATCHES_matches_beyond_only_the_newest_messages(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """At most RARE_MATCHES matches: all of them, so the oldest room is found; one more: only the
    newest WALK_WINDOW messages are searched."""
    no_room_by_room(monkeypatch)
    monkeypatch.setattr("inbox.adapters.read_models.search.RECENT_WINDOW", 3)
    monkeypatch.setattr("inbox.adapters.read_models.search.WALK_WINDOW", 5)
    monkeypatch.setattr("inbox.adapters.read_models.search.RARE_MATCHES", bound)
    old = inbox.inbound("whatsapp_cloud", "628100000001", text="garansi lama")["room_id"]
    busy = ""
    for i in range(12):
        busy = inbox.inbound("whatsapp_cloud", "628100000002", text=f"garansi {i}")["room_id"]
    inbox.project()
    analyze_messages(inbox.settings)  # the store's size, as the window's rate is extrapolated to it: 13 matches

    found = ids(inbox.search("garansi", by="conversation"))

    assert found == ([busy, old] if bound == 13 else [busy])


def test_a_word_whose_recent_rate_is_over_twice_RARE_MATCHES_in_the_store_is_not_read_from_the_index(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading it whole would stop at RARE_MATCHES + 1 rows and give up: it is walked at once."""
    no_room_by_room(monkeypatch)
    monkeypatch.setattr("inbox.adapters.read_models.search.RECENT_WINDOW", 3)
    monkeypatch.setattr("inbox.adapters.read_models.search.WALK_WINDOW", 5)
    monkeypatch.setattr("inbox.adapters.read_models.search.RARE_MATCHES", 6)  # 13 matches > 2 * 6
    for i in range(13):
        busy = inbox.inbound("whatsapp_cloud", "628100000002", text=f"garansi {i}")["room_id"]
    inbox.project()
    analyze_messages(inbox.settings)

    found, ran = traced_search(inbox.settings, "by_conversation", "garansi")

    assert ids(found) == [busy]
    assert ran and not any("every_match" in sql for sql in ran)  # rare_matches_sql's CTE


def analyze_messages(settings: Settings) -> None:
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("ANALYZE messages")


def traced_search(settings: Settings, how: str, q: str) -> tuple[list[dict[str, Any]], list[str]]:
    """An admin's first page of RoomSearch.`how` for `q`, and the SQL of each query it ran (the
    query benchmark's tracing search, on a session set up as the API's read pool's)."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        configure_read_session(conn, settings.db_schema)
        search = TracedSearch(conn)
        page = getattr(search, how)(Actor("admin1", "org1", Role.ADMIN), RoomFilter(), q, limit=20, cursor=None)
    return page["items"], [sql for sql, _ in search.ran]


@pytest.mark.parametrize("newest_matches, counted", [(2, False), (1, True)])
def test_a_name_whose_share_of_the_newest_rooms_extrapolates_over_twice_the_bound_is_not_counted_in_full(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch, newest_matches: int, counted: bool
) -> None:
    """Counting its matches would read CONTACT_MAX_MATCHES + 1 rows and give up: the window's
    ranking is kept at once. 2 of the newest 2 rooms of 6: ~6 in all, over 2 * 2; 1 of 2: ~3."""
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_WINDOW", 2)
    monkeypatch.setattr("inbox.adapters.read_models.search.CONTACT_MAX_MATCHES", 2)
    for i in range(6 - newest_matches):
        inbox.inbound("whatsapp_cloud", f"6287{i}", name=f"Siti {i}")
    newest = [inbox.inbound("whatsapp_cloud", f"6288{i}", name=f"Wibowo {i}")["room_id"] for i in range(newest_matches)]
    inbox.project()

    found, ran = traced_search(inbox.settings, "by_contact", "wibow")

    assert ids(found) == newest[::-1]
    assert any("every_match" in sql for sql in ran) == counted  # contact_group_sql's capped count


def test_a_code_is_found_by_its_rarest_word_among_many_messages_with_the_other(
    inbox: Inbox, people: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_room_by_room(monkeypatch)
    monkeypatch.setattr("inbox.adapters.read_models.search.RECENT_WINDOW", 3)
    monkeypatch.setattr("inbox.adapters.read_models.search.WALK_WINDOW", 3)
    monkeypatch.setattr("inbox.adapters.read_models.search.RARE_MATCHES", 3)  # "inv" has more: not read whole
    for i in range(6):  # "inv" everywhere, in the recent window too; "-2041" once, long ago
        inbox.inbound("whatsapp_cloud", f"62890{i}", text=f"invoice INV-99{i} sudah dikirim")
    inbox.project()

    [hit] = inbox.search("INV-2041", by="conversation")

    assert hit["id"] == people["budi"]
    assert "<mark>INV</mark>-<mark>2041</mark>" in hit["match"]["snippet"]


def _rooms_with_histories(settings: Settings, histories: list[tuple[datetime, list[tuple[datetime, str]]]]) -> None:
    """Resolved rooms of org1 with the given activity and messages (recorded_at, text), straight
    into the read models."""
    rooms, messages = [], []
    for updated_at, history in histories:
        room = uuid.uuid4()
        rooms.append((room, f"c{len(rooms)}", updated_at))
        messages += [(uuid.uuid4(), room, seq, at, text) for seq, (at, text) in enumerate(history, start=2)]
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        use_search_path(conn, settings.db_schema)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rooms (id, org_id, tab, channel, channel_account_id, channel_account, contact_id,"
                " status, awaiting_reply, opened_at, updated_at, version)"
                " VALUES (%s, 'org1', 'messages', 'whatsapp_cloud', gen_random_uuid(), 'x', %s, 'resolved', false,"
                " %s, %s, 1)", [(room, contact, updated_at, updated_at) for room, contact, updated_at in rooms])
            cur.executemany(
                "INSERT INTO messages (id, room_id, org_id, seq, direction, text, sent_at, recorded_at)"
                " VALUES (%s, %s, 'org1', %s, 'inbound', %s, %s, %s)",
                [(mid, room, seq, text, at, at) for mid, room, seq, at, text in messages])
        conn.execute("ANALYZE rooms")
        conn.execute("ANALYZE messages")


def test_room_by_room_ranks_exactly_whatever_the_chunks_and_the_ties(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms read in activity order stop once no room left can rank; the page is still the exact
    ranking (latest match newest first, then the message id), with coarse clocks making ties."""
    rng = random.Random(12)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    histories = []
    for _ in range(300):
        times = sorted(start + timedelta(seconds=rng.randint(0, 300)) for _ in range(rng.randint(1, 6)))
        history = [(at, "ada promo?" if rng.random() < 0.3 else "halo kak") for at in times]
        histories.append((times[-1], history))  # the room's activity is its newest message's time
    _rooms_with_histories(db_settings, histories)
    with psycopg.connect(conninfo(db_settings), autocommit=True) as conn:
        configure_read_session(conn, db_settings.db_schema)
        latest: dict[str, tuple[datetime, uuid.UUID]] = {}
        for room, mid, at in conn.execute(
                "SELECT room_id, id, recorded_at FROM messages WHERE text LIKE '%promo%'").fetchall():
            latest[str(room)] = max(latest.get(str(room), (at, mid)), (at, mid))
        ranking = [(room, str(mid)) for room, (_, mid) in sorted(latest.items(), key=lambda kv: kv[1], reverse=True)]
        assert len(ranking) > 60
        admin = Actor("admin1", "org1", Role.ADMIN)
        for chunk in (1, 7, 50):
            monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_CHUNK", chunk)
            for wanted in (1, 2, 21, 61):
                search = TracedSearch(conn)
                found = search._rooms_first(admin, RoomFilter(status="resolved"), "'promo':*", wanted, budget=301)
                assert found is not None and list(found.items()) == ranking[:wanted], (chunk, wanted)
                # With fewer rooms allowed than it takes, it says so rather than answer inexactly
                assert search._rooms_first(admin, RoomFilter(status="resolved"), "'promo':*", wanted,
                                           budget=wanted) is None, (chunk, wanted)


def test_room_by_room_reads_only_the_rooms_that_can_rank_for_a_common_word(db_settings: Settings) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _rooms_with_histories(db_settings, [  # 1,000 rooms, each last saying "promo"
        (start + timedelta(minutes=i), [(start + timedelta(minutes=i), "ada promo?")]) for i in range(1000)])
    with psycopg.connect(conninfo(db_settings)) as conn:  # one transaction: its own table statistics
        configure_read_session(conn, db_settings.db_schema)
        before = rooms_read(conn, db_settings.db_schema)
        admin = Actor("admin1", "org1", Role.ADMIN)
        assert TracedSearch(conn)._rooms_first(admin, RoomFilter(status="resolved"), "'promo':*", 21,
                                               budget=1001) is not None
        assert rooms_read(conn, db_settings.db_schema) - before <= 2 * ROOMS_FIRST_CHUNK + 1  # not all 1,000


def rooms_read(conn: psycopg.Connection[Any], schema: str) -> int:
    """Rows of `rooms` read so far in this transaction: by sequential scans and from its indexes."""
    row = conn.execute(
        "SELECT t.seq_tup_read + (SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(i.indexrelid)), 0)"
        " FROM pg_index i WHERE i.indrelid = t.relid)"  # an index's idx_tup_read, in this transaction
        " FROM pg_stat_xact_user_tables t WHERE t.relname = 'rooms' AND t.schemaname = %s", (schema,)).fetchone()
    assert row is not None
    return int(row[0])


def test_room_by_room_probes_a_broad_filter_only_when_it_leaves_at_most_a_fifth_of_the_rooms(
    inbox: Inbox, people: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_LIMIT", 0)  # every filter is broad here
    admin = Actor("admin1", "org1", Role.ADMIN)
    with psycopg.connect(conninfo(inbox.settings), autocommit=True) as conn:
        configure_read_session(conn, inbox.settings.db_schema)
        search = TracedSearch(conn)
        assert search._room_by_room_budget(admin, RoomFilter(tab="comments")) == ROOMS_FIRST_PROBE  # 1 room of 5
        assert search._room_by_room_budget(admin, RoomFilter(tab="messages")) == 0  # 4 of 5: the walk
        assert search._room_by_room_budget(admin, RoomFilter()) == 0
        monkeypatch.setattr("inbox.adapters.read_models.search.ROOMS_FIRST_LIMIT", 5000)
        assert search._room_by_room_budget(admin, RoomFilter(tab="messages")) == 5  # few: all of them, and one more
