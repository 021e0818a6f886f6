// Vigie console: the little the pages need beyond HTML. Live incident updates (server-sent
// events), keyboard shortcuts, the browser's time zone at sign-in. No library.
"use strict";
(function () {
  const body = document.body;

  // Sign-in: the browser's time zone becomes the session's (dates are shown in it).
  const zoneName = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  document.querySelectorAll("input#tz, input.tz").forEach((el) => { el.value = zoneName; });

  // Live: a new incident appears, an open one updates, without reloading.
  const say = (text) => {
    const live = document.getElementById("live");
    if (!live) return;
    live.textContent = text;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { live.textContent = ""; }, 6000);
  };
  if (body.dataset.live && window.EventSource) {
    const source = new EventSource("/events");
    source.addEventListener("incident", (ev) => {
      const msg = JSON.parse(ev.data);
      const table = document.querySelector("table[data-live-table] tbody");
      let known = false;
      if (table) {
        const tmp = document.createElement("tbody");
        tmp.innerHTML = msg.row;  // rendered and escaped by the server
        const row = tmp.firstElementChild;
        const old = table.querySelector(`tr[data-key="${CSS.escape(msg.key)}"]`);
        known = Boolean(old);
        if (old) { old.replaceWith(row); } else { table.prepend(row); }
        row.classList.add("flash");
      }
      const page = document.getElementById("incident");
      if (page && page.dataset.key === msg.key) {
        const st = document.getElementById("status");
        if (st) st.textContent = msg.status;
        known = true;
      }
      say((known || msg.change !== "opened" ? body.dataset.updatedText : body.dataset.newText)
          + " : " + msg.key);
    });
    source.addEventListener("signedout", () => { source.close(); window.location = "/login"; });
  }

  // Keyboard: g then a letter goes to a page; "/" searches; j/k walk the table's rows.
  let pending = false;
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t.closest && t.closest("input, textarea, select")) return;
    if (pending) {
      pending = false;
      const link = document.querySelector(`nav.sections a[data-key="${ev.key}"]`);
      if (link) { ev.preventDefault(); window.location = link.href; }
      return;
    }
    if (ev.key === "g") { pending = true; return; }
    if (ev.key === "/") {
      const field = document.querySelector("form.filters input, form.filters select");
      if (field) { ev.preventDefault(); field.focus(); }
      return;
    }
    if (ev.key === "j" || ev.key === "k") {
      const links = Array.from(document.querySelectorAll("table.list tbody tr a"));
      if (!links.length) return;
      const i = links.indexOf(document.activeElement);
      const next = ev.key === "j" ? Math.min(i + 1, links.length - 1) : Math.max(i - 1, 0);
      links[i < 0 ? 0 : next].focus();
      ev.preventDefault();
    }
  });
})();
