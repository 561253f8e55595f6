// The Inbox page, live: badges, title, room list and the open room follow GET /v1/stream
// (docs: SSE contract; events counters, room, room_hidden, message, reset). EventSource
// reconnects by itself and resumes with Last-Event-ID. When the stream is not there (a 404, or a
// server that refuses it) the page polls the counters instead and re-fetches what changed.
"use strict";
(function () {
  const POLL_MS = 3000;
  const STREAM_RETRY_MS = 15000;
  const GONE = '<p class="placeholder">This room is no longer in your inbox.</p>';
  const body = document.body;
  const state = { source: null, poll: null, lastCounters: null, listTimer: null, retryTimer: null, anchor: null,
                  lastListHtml: null, draft: null };

  function $(sel) { return document.querySelector(sel); }
  function openRoom() { const v = $(".room-view"); return v ? v.dataset.room : ""; }
  function setLive(mode, text) { const el = $("#live"); if (el) { el.dataset.state = mode; el.textContent = text; } }

  // ---- counters: badges, status counts, the browser-tab title ----------------------------------
  function applyCounters(c) {
    state.lastCounters = JSON.stringify(c);
    for (const tab of ["messages", "comments"]) {
      const badge = $("#badge-" + tab);
      if (!badge) continue;
      badge.textContent = String(c[tab]);
      badge.setAttribute("aria-label", c[tab] + " awaiting reply");
      badge.hidden = !c[tab];
    }
    const tab = c.tabs && c.tabs[body.dataset.tab];
    if (tab) {
      for (const s of ["all", "unassigned", "assigned", "resolved"]) {
        const el = $("#count-" + s);
        if (el) el.textContent = String(tab.statuses[s]);
      }
    }
    document.title = (c.unassigned ? "(" + c.unassigned + ") " : "") + "Inbox";
  }

  async function fetchCounters() {
    const r = await fetch("/ui/counters", { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { window.location.assign("/session/new"); return null; }
    if (!r.ok) throw new Error("counters: HTTP " + r.status);
    return r.json();
  }

  // ---- the room list ---------------------------------------------------------------------------
  function refreshList() {
    clearTimeout(state.listTimer);
    state.listTimer = setTimeout(function () {
      const list = $("#room-list");
      if (!list) return;
      const focused = document.activeElement && document.activeElement.closest("#room-list li");
      const keep = focused ? focused.id : null;
      htmx.ajax("GET", "/ui/list?" + list.dataset.query, { target: "#room-list", swap: "innerHTML" }).then(function () {
        markCurrent();
        if (keep) { const el = document.getElementById(keep); const a = el && el.querySelector("a"); if (a) a.focus(); }
      });
    }, 250);
  }

  function markCurrent() {
    const id = openRoom();
    document.querySelectorAll("#room-list li.room-item").forEach(function (li) {
      li.classList.toggle("current", li.dataset.room === id);
    });
  }

  // ---- the open room ---------------------------------------------------------------------------
  function refreshRoomHead() {
    const id = openRoom();
    if (!id) return;
    htmx.ajax("GET", "/ui/rooms/" + encodeURIComponent(id), { target: ".room-head", select: ".room-head", swap: "outerHTML" });
  }

  function when(iso) {
    const d = new Date(iso), now = new Date();
    const hm = d.toISOString().slice(11, 16);
    return d.toISOString().slice(0, 10) === now.toISOString().slice(0, 10) ? hm
      : d.toLocaleDateString("en-GB", { day: "2-digit", month: "short", timeZone: "UTC" }) + " " + hm;
  }

  function messageElement(m) {  // the same markup as _macros.html `message`, built with textContent only
    const li = document.createElement("li");
    li.className = "msg " + m.direction + (m.removed ? " removed" : "");
    li.id = "msg-" + m.id;
    li.dataset.seq = String(m.seq);
    const bubble = document.createElement("div"); bubble.className = "bubble";
    if (m.kind && m.kind !== "text") {
      const kind = document.createElement("p"); kind.className = "kind";
      const n = (m.attachments || []).length;
      kind.textContent = m.kind + (n ? " · " + n + " attachment" + (n === 1 ? "" : "s") : "");
      bubble.append(kind);
    }
    const text = document.createElement("p"); text.className = "text"; text.textContent = m.text;
    const meta = document.createElement("p"); meta.className = "meta";
    if (m.direction === "outbound") {
      const who = document.createElement("span"); who.className = "who";
      who.textContent = (m.sender && (m.sender.name || m.sender.id)) || "Agent";
      meta.append(who, " · ");
    }
    const t = document.createElement("time"); t.dateTime = m.sent_at; t.textContent = when(m.sent_at);
    meta.append(t);
    if (m.edited_at) meta.append(" · edited");
    if (m.removed) meta.append(" · removed by the customer");
    if (m.direction === "outbound" && m.delivery) meta.append(" · ", tickElement(m.delivery));
    bubble.append(text, meta); li.append(bubble);
    return li;
  }

  const TICKS = {pending: "\u25CB", sent: "\u2713", delivered: "\u2713\u2713", read: "\u2713\u2713", failed: "\u26A0", unknown: "?"};

  function tickElement(d) {  // the same as _macros.html `ticks`
    const span = document.createElement("span");
    span.className = "tick tick-" + d.status;
    span.setAttribute("role", "img");
    span.setAttribute("aria-label", "delivery: " + d.status);
    const reason = d.error && (d.error.title || d.error.message);
    span.title = d.status + (reason ? ": " + reason : "");
    span.textContent = TICKS[d.status] || d.status;
    return span;
  }

  function upsertMessage(li) {
    const history = $("#history");
    if (!history) return;
    const existing = document.getElementById(li.id);
    if (existing) { if (existing.outerHTML !== li.outerHTML) existing.replaceWith(li); return; }
    const seq = Number(li.dataset.seq);
    const items = history.querySelectorAll("li.msg");
    const last = items[items.length - 1];
    if (!last || Number(last.dataset.seq) < seq) {
      const atBottom = history.scrollHeight - history.scrollTop - history.clientHeight < 40;
      history.append(li);
      if (atBottom) history.scrollTop = history.scrollHeight;  // follow the conversation, unless reading back
      return;
    }
    for (const item of items) {  // an older one arriving late: keep the history in order
      if (Number(item.dataset.seq) > seq) { item.before(li); return; }
    }
  }

  async function refreshHistory() {  // merge the room's newest page into what is shown; new header if it changed
    const id = openRoom();
    if (!id) return;
    const r = await fetch("/ui/rooms/" + encodeURIComponent(id), { credentials: "same-origin" });
    if (r.status === 404) { if (id === openRoom()) $("#room").innerHTML = GONE; return; }
    if (!r.ok) throw new Error("room: HTTP " + r.status);
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    if (id !== openRoom()) return;  // another room was opened meanwhile
    doc.querySelectorAll("#history li.msg").forEach(function (li) { upsertMessage(document.importNode(li, true)); });
    const head = doc.querySelector(".room-head"), current = $(".room-head");
    if (head && current && head.outerHTML !== current.outerHTML) {
      const fresh = document.importNode(head, true);
      current.replaceWith(fresh);
      htmx.process(fresh);
    }
  }

  async function pollList() {  // polling fallback: swap the list in only when the server's differs
    const list = $("#room-list");
    if (!list) return;
    const r = await fetch("/ui/list?" + list.dataset.query, { credentials: "same-origin" });
    if (!r.ok) throw new Error("list: HTTP " + r.status);
    const html = await r.text();
    if (html !== state.lastListHtml) {
      if (state.lastListHtml !== null) refreshList();
      state.lastListHtml = html;
    }
  }

  function refreshAll() {
    fetchCounters().then(function (c) { if (c) applyCounters(c); }).catch(function () {});
    refreshList();
    refreshHistory().catch(function (err) { console.warn("inbox: could not refresh the room", err); });
  }

  // ---- the stream --------------------------------------------------------------------------------
  function onEvent(name, handler) {
    state.source.addEventListener(name, function (e) {
      let data;
      try { data = JSON.parse(e.data); } catch (err) { console.warn("inbox: bad " + name + " event", err); return; }
      handler(data);
    });
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (!window.EventSource) { startPolling(); return; }
    const reopened = state.source !== null;
    state.source = new EventSource("/v1/stream", { withCredentials: true });
    state.source.onopen = function () {
      stopPolling();
      setLive("live", "live");
      if (reopened) refreshAll();  // a new EventSource has no Last-Event-ID: catch up once
    };
    state.source.onerror = function () {
      if (state.source.readyState === EventSource.CLOSED) {
        // Refused (404 before the stream exists, 401, 5xx): poll, and try the stream again later.
        state.source.close();
        startPolling();
        state.retryTimer = setTimeout(connect, STREAM_RETRY_MS);
      } else {
        setLive("reconnecting", "reconnecting…");  // EventSource retries by itself, with Last-Event-ID
      }
    };
    onEvent("counters", applyCounters);
    onEvent("room", function (room) {
      refreshList();
      if (room.id === openRoom()) refreshRoomHead();
    });
    onEvent("room_hidden", function (h) {
      const li = document.getElementById("room-" + h.id);
      if (li) li.remove();
      if (h.id === openRoom()) $("#room").innerHTML = GONE;
    });
    onEvent("message", function (m) { if (m.room_id === openRoom()) upsertMessage(messageElement(m)); });
    onEvent("reset", refreshAll);
  }

  function startPolling() {
    setLive("polling", "updating every few seconds");
    if (state.poll) return;
    const tick = async function () {  // badges, list and open room; each swapped in only when it changed
      try {
        const c = await fetchCounters();
        if (c && JSON.stringify(c) !== state.lastCounters) applyCounters(c);
        await pollList();
        await refreshHistory();
        setLive("polling", "updating every few seconds");
      } catch (err) {
        setLive("offline", "offline, retrying…");
      }
    };
    state.poll = setInterval(tick, POLL_MS);
    tick();
  }

  function stopPolling() { if (state.poll) { clearInterval(state.poll); state.poll = null; } }

  // ---- htmx glue: errors, commands, the resolve-expired dialog -------------------------------------
  function flash(text) {
    const el = $("#flash");
    if (!el) return;
    el.textContent = text;
    el.hidden = !text;
  }

  document.addEventListener("htmx:responseError", function (e) {
    const xhr = e.detail.xhr;
    if (xhr.status === 401) { window.location.assign("/session/new"); return; }
    let detail = "Something went wrong (HTTP " + xhr.status + ").";
    try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (err) { /* not JSON: keep the generic text */ }
    flash(detail);
  });
  document.addEventListener("htmx:sendError", function () { flash("The server cannot be reached; try again."); });
  document.addEventListener("htmx:afterRequest", function (e) { if (e.detail.successful) flash(""); });
  document.addEventListener("inbox-changed", function () {  // a command succeeded (HX-Trigger)
    fetchCounters().then(function (c) { if (c) applyCounters(c); }).catch(function () {});
    refreshList();
  });
  // "Load older dialogs": keep the message that was first in view where it was, older ones above it.
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "older") state.anchor = $("#history li.msg");
    if (e.detail.target && e.detail.target.id === "room") {
      // The answer to Take, Assign or Resolve swaps the whole room in, reply box included, and it
      // comes once the projection caught up: keep a reply typed meanwhile (not the one just sent).
      const reply = $("#reply-text"), path = (e.detail.requestConfig && e.detail.requestConfig.path) || "";
      state.draft = reply && reply.value && !path.endsWith("/reply") ? { room: openRoom(), text: reply.value } : null;
    }
  });
  document.addEventListener("htmx:afterSettle", function () {
    const history = $("#history");
    if (!state.anchor || !history) return;
    history.scrollTop += state.anchor.getBoundingClientRect().top - history.getBoundingClientRect().top - 48;
    state.anchor = null;
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "room") {
      body.dataset.room = openRoom();
      markCurrent();
      const history = $("#history");
      if (history) history.scrollTop = history.scrollHeight;  // newest messages in view
      const reply = $("#reply-text");
      if (reply && state.draft && state.draft.room === openRoom() && !reply.value) reply.value = state.draft.text;
      state.draft = null;
      if (e.detail.requestConfig && e.detail.requestConfig.verb === "post" && reply) reply.focus();
    }
  });

  const dialog = $("#resolve-expired-dialog");
  const opener = $("#open-resolve-expired");
  if (dialog && opener) {
    opener.addEventListener("click", function () { $("#resolve-result-slot").innerHTML = ""; dialog.showModal(); });
    $("#close-resolve-expired").addEventListener("click", function () { dialog.close(); opener.focus(); });
  }

  const initial = $("#history");
  if (initial) initial.scrollTop = initial.scrollHeight;
  connect();
})();
