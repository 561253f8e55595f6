"""The Inbox story in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright,
against real `inbox api|relay|worker` processes and the broker.

An agent and a supervisor sign in, in two browser contexts. Customers write on WhatsApp, Instagram
and Messenger and comment under a post: both see badges, the `(N) Inbox` title and the lists change
without reloading. The agent types a reply, takes the room (the draft survives the room being
swapped in) and sends it; the supervisor sees it assigned. Search by
contact and by conversation; "Load older dialogs" on a 60-message room; "Resolve all expired chat
room" without and with unassigned rooms; the agent never sees another agent's room.

Screenshots of the main states are saved under the test's tmp dir (printed at the end).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inbox.config import Settings
from tests.support import Customers, Pipeline, http_settings, running, token
from tests.web.browser import chromium, expect

pytestmark = pytest.mark.e2e

LIVE = 60_000  # ms: how long a page may take to show a change (projection via Kafka, then the page)
LONG_AGO = datetime.now(UTC) - timedelta(hours=30)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with running(http_settings(settings), tmp_path, "worker", "relay", "api") as p:
        yield p


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


class Screens:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.root / f"{name}.png"))


def signed_in(browser: Any, p: Pipeline, *, role: str, user: str, errors: list[str]) -> Any:
    """A browser context of its own, signed in through the sign-in form."""
    context = browser.new_context(base_url=p.base_url, viewport={"width": 1366, "height": 800})
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(f"{user}: {e}"))
    # Every console error fails the story, except the stream's 404 while /v1/stream is not there
    # (the page then polls; with the stream it is a 200 and nothing is logged).
    page.on("console", lambda m: errors.append(f"{user}: {m.text} ({m.location.get('url')})")
            if m.type == "error" and not m.location.get("url", "").endswith("/v1/stream") else None)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/session/new$"))
    page.get_by_label("Access token").fill(token(p.settings, role=role, user=user))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()
    return page


def room_item(page: Any, name: str) -> Any:
    return page.locator("#room-list li.room-item", has_text=name)


def test_the_inbox_story_in_a_browser(pipeline: Pipeline, browser: Any, tmp_path: Path) -> None:
    screens = Screens(tmp_path / "screenshots")
    customers = Customers(pipeline)
    errors: list[str] = []
    agent = signed_in(browser, pipeline, role="agent", user="agent1", errors=errors)
    spv = signed_in(browser, pipeline, role="supervisor", user="spv1", errors=errors)
    for page in (agent, spv):
        expect(page).to_have_title("Inbox")
        expect(page.locator("#badge-messages")).to_be_hidden()
        expect(page.locator("#room-list")).to_contain_text("No rooms here.")

    # 1. Messages arrive on three channels and a post: badges, title and lists change live.
    ana = customers.write("whatsapp_cloud", "6281111", "Halo, where is my order INV-2041?", name="Ana Souza")
    customers.write("instagram", "igsid-budi", "is the red one in stock?", name="Budi Hartono")
    customers.write("facebook_messenger", "psid-citra", "when do I get my refund?", name="Citra Lestari")
    customers.write("instagram_comment", "igsid-dewi", "how much?", name="Dewi", post="post-1")
    for page in (agent, spv):
        expect(page).to_have_title("(4) Inbox", timeout=LIVE)
        expect(page.locator("#badge-messages")).to_have_text("3", timeout=LIVE)
        expect(page.locator("#badge-comments")).to_have_text("1", timeout=LIVE)
        expect(page.locator("#count-unassigned")).to_have_text("3", timeout=LIVE)
        for name in ("Ana Souza", "Budi Hartono", "Citra Lestari"):
            expect(room_item(page, name)).to_be_visible(timeout=LIVE)
        expect(room_item(page, "Dewi")).to_have_count(0)  # a comment: on the Comments tab
    expect(room_item(spv, "Ana Souza").get_by_role("img", name="WhatsApp Cloud")).to_be_visible()
    expect(room_item(spv, "Budi Hartono").get_by_role("img", name="Instagram")).to_be_visible()
    expect(room_item(spv, "Citra Lestari").get_by_role("img", name="Facebook Messenger")).to_be_visible()
    screens.shot(spv, "01-supervisor-new-messages")

    # 2. The agent takes Ana's room and replies; the supervisor sees it assigned, live.
    room_item(agent, "Ana Souza").get_by_role("link").click()
    expect(agent.get_by_role("heading", name="Ana Souza")).to_be_visible()
    expect(agent.locator("#history")).to_contain_text("where is my order INV-2041?")
    reply = agent.get_by_label("Reply to Ana Souza")
    reply.fill("Hi Ana, INV-2041 ships today.")  # typed before taking the room
    with agent.expect_response(lambda r: r.url.endswith("/take")):
        agent.get_by_role("button", name="Take").click()
    expect(agent.locator("#room-assignee")).to_have_text("Assigned to agent1", timeout=LIVE)
    # Take's answer swapped the whole room in, reply box included (it then has the focus): the draft stays.
    expect(reply).to_be_focused()
    expect(reply).to_have_value("Hi Ana, INV-2041 ships today.")
    agent.get_by_role("button", name="Send").click()
    expect(agent.locator("#history li.msg.outbound")).to_contain_text("INV-2041 ships today", timeout=LIVE)
    expect(agent.locator("#badge-messages")).to_have_text("2", timeout=LIVE)
    screens.shot(agent, "02-agent-replied")

    expect(spv).to_have_title("(3) Inbox", timeout=LIVE)
    ana_for_spv = room_item(spv, "Ana Souza")
    expect(ana_for_spv.locator(".status")).to_have_text("Assigned", timeout=LIVE)
    expect(ana_for_spv.locator(".assignee")).to_have_text("agent1")
    expect(ana_for_spv.locator(".preview")).to_contain_text("You: Hi Ana, INV-2041 ships today.")
    expect(spv.locator("#count-assigned")).to_have_text("1")
    expect(spv.locator("#badge-messages")).to_have_text("2")
    spv.get_by_role("link", name=re.compile(r"^Assigned")).click()
    expect(room_item(spv, "Ana Souza")).to_be_visible()
    expect(room_item(spv, "Budi Hartono")).to_have_count(0)
    spv.get_by_role("link", name=re.compile(r"^All")).click()

    # 3. Search by contact (partial, case-insensitive) and by conversation (with a snippet).
    spv.get_by_label("Search", exact=True).fill("budi")
    spv.get_by_role("button", name="Search").click()
    expect(room_item(spv, "Budi Hartono")).to_be_visible()
    expect(spv.locator("#room-list li.room-item")).to_have_count(1)
    spv.get_by_label("Search", exact=True).fill("refund")
    spv.get_by_label("Search by").select_option("conversation")
    spv.get_by_role("button", name="Search").click()
    expect(room_item(spv, "Citra Lestari").locator(".snippet mark")).to_have_text("refund")
    expect(spv.locator("#room-list li.room-item")).to_have_count(1)
    screens.shot(spv, "03-search-by-conversation")
    spv.get_by_role("link", name="Clear search").click()

    # 4. Load older dialogs on a 60-message room.
    for i in range(1, 61):
        customers.write("whatsapp_cloud", "6289999", f"line {i:02d}", name="Eko Prasetyo")
    eko = room_item(spv, "Eko Prasetyo")
    expect(eko.locator(".preview")).to_contain_text("line 60", timeout=LIVE)
    eko.get_by_role("link").click()
    history = spv.locator("#history li.msg")
    expect(history).to_have_count(30)
    expect(history.first).to_contain_text("line 31")
    spv.get_by_role("button", name="Load older dialogs").click()
    expect(history).to_have_count(60)
    expect(history.first).to_contain_text("line 01")
    expect(history.last).to_contain_text("line 60")
    expect(spv.get_by_role("button", name="Load older dialogs")).to_have_count(0)
    screens.shot(spv, "04-older-dialogs")

    # 5. The agent never sees another agent's room: the supervisor gives Budi's room to agent2.
    budi_for_agent = room_item(agent, "Budi Hartono")
    expect(budi_for_agent).to_be_visible()
    room_item(spv, "Budi Hartono").get_by_role("link").click()
    expect(spv.get_by_role("heading", name="Budi Hartono")).to_be_visible()
    spv.get_by_label("Assign to").fill("agent2")
    spv.get_by_role("button", name="Assign", exact=True).click()
    expect(spv.locator("#room-assignee")).to_have_text("Assigned to agent2", timeout=LIVE)
    expect(budi_for_agent).to_have_count(0, timeout=LIVE)
    budi = spv.locator(".room-view").get_attribute("data-room")
    agent.goto(f"/?room={budi}")
    expect(agent.locator("#room")).to_contain_text("no longer in your inbox")
    expect(room_item(agent, "Budi Hartono")).to_have_count(0)
    assert agent.request.get(f"/ui/rooms/{budi}").status == 404
    agent.get_by_label("Search", exact=True).fill("budi")
    agent.get_by_role("button", name="Search").click()
    expect(agent.locator("#room-list")).to_contain_text("No rooms match")

    # 6. Resolve all expired chat room: first assigned rooms only, then unassigned too.
    customers.write("whatsapp_cloud", "6287777", "old question", name="Fajar Old", at=LONG_AGO)
    customers.write("instagram", "igsid-gita", "old question", name="Gita Old", at=LONG_AGO)
    spv.get_by_text("Filter", exact=True).click()
    spv.get_by_label("Expired", exact=True).select_option("yes")
    spv.get_by_role("button", name="Apply").click()
    expect(spv.get_by_text("Filter (on)")).to_be_visible()
    expect(room_item(spv, "Fajar Old")).to_be_visible(timeout=LIVE)
    expect(room_item(spv, "Gita Old")).to_be_visible(timeout=LIVE)
    expect(spv.locator("#room-list li.room-item")).to_have_count(2)
    room_item(spv, "Fajar Old").get_by_role("link").click()
    spv.get_by_label("Assign to").fill("agent1")
    spv.get_by_role("button", name="Assign", exact=True).click()
    expect(spv.locator("#room-assignee")).to_have_text("Assigned to agent1", timeout=LIVE)
    expect(room_item(spv, "Fajar Old").locator(".status")).to_have_text("Assigned", timeout=LIVE)

    spv.get_by_role("button", name="Resolve all expired chat room").click()
    dialog = spv.get_by_role("dialog", name="Resolve all expired chat room")
    expect(dialog).to_be_visible()
    for choice in ("WhatsApp Cloud", "Instagram", "Facebook Messenger"):
        expect(dialog.get_by_label(choice)).to_be_checked()
    expect(dialog.get_by_label("Including unassigned rooms")).not_to_be_checked()
    screens.shot(spv, "05-resolve-expired-dialog")
    dialog.get_by_role("button", name="Resolve", exact=True).click()
    expect(dialog.locator("#resolve-result")).to_have_text("Resolved 1 expired room.")
    dialog.get_by_role("button", name="Close").click()
    expect(room_item(spv, "Fajar Old")).to_have_count(0, timeout=LIVE)  # resolved: no longer expired
    expect(room_item(spv, "Gita Old")).to_be_visible()

    spv.get_by_role("button", name="Resolve all expired chat room").click()
    dialog.get_by_label("Including unassigned rooms").check()
    dialog.get_by_role("button", name="Resolve", exact=True).click()
    expect(dialog.locator("#resolve-result")).to_have_text("Resolved 1 expired room.")
    dialog.get_by_role("button", name="Close").click()
    expect(spv.locator("#room-list")).to_contain_text("No rooms here.", timeout=LIVE)
    spv.goto("/?status=resolved")
    for name in ("Fajar Old", "Gita Old"):
        expect(room_item(spv, name)).to_be_visible()
    # The agent cannot resolve everyone's expired rooms: the button is not there.
    expect(agent.get_by_role("button", name="Resolve all expired chat room")).to_have_count(0)

    # The main view, for the README.
    spv.goto(f"/?room={ana}")
    expect(spv.get_by_role("heading", name="Ana Souza")).to_be_visible()
    screens.shot(spv, "06-inbox")
    print(f"\nscreenshots: {screens.root}")
    assert errors == []
    customers.close()
