// smartgate console: the only script. Refreshes the overview and appends live feed rows that the
// server renders; no framework, no build step.
"use strict";

function refreshOverview(box) {
  const url = box.dataset.refresh;
  setInterval(async () => {
    if (box.contains(document.activeElement) && document.activeElement.tagName !== "BODY") {
      return; // the user is filling in a command form
    }
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401) { window.location = "/login"; return; }
      if (response.ok) { box.innerHTML = await response.text(); }
    } catch (err) { /* the daemon restarts: keep the last view */ }
  }, 1000);
}

function followFeed(body) {
  const state = document.getElementById("feed-state");
  const events = document.getElementById("feed-events");
  const source = new EventSource(body.dataset.stream);
  source.onopen = () => { state.textContent = "live"; state.className = "ok"; };
  source.onerror = () => {
    state.textContent = "reconnecting…";
    state.className = "bad";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended with a daemon restart): reload, which leads to the login.
      setTimeout(() => window.location.reload(), 3000);
    }
  };
  source.addEventListener("transaction", (message) => {
    const holder = document.createElement("tbody");
    holder.innerHTML = message.data;
    const row = holder.firstElementChild;
    if (!row) { return; }
    const old = document.getElementById(row.id);
    if (old) { old.replaceWith(row); } else { body.prepend(row); }
    const empty = document.getElementById("feed-empty");
    if (empty) { empty.remove(); }
    while (body.rows.length > 200) { body.deleteRow(-1); }
  });
  source.addEventListener("event", (message) => {
    const holder = document.createElement("ul");
    holder.innerHTML = message.data;
    if (holder.firstElementChild) { events.prepend(holder.firstElementChild); }
    while (events.children.length > 50) { events.lastElementChild.remove(); }
  });
  source.addEventListener("lagged", () => { source.close(); window.location.reload(); });
}

document.addEventListener("DOMContentLoaded", () => {
  const overview = document.getElementById("overview");
  if (overview) { refreshOverview(overview); }
  const feed = document.getElementById("feed-rows");
  if (feed) { followFeed(feed); }
});
