// cronledger dashboard: local times, filters and self-refresh. No inline
// script anywhere, so the Content-Security-Policy can forbid it.
"use strict";

(function () {
  const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const UNITS = [
    ["year", 31536000], ["month", 2592000], ["week", 604800],
    ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1],
  ];

  function relative(date) {
    const seconds = (date.getTime() - Date.now()) / 1000;
    for (const [unit, size] of UNITS) {
      if (Math.abs(seconds) >= size || unit === "second") {
        return relativeFormat.format(Math.round(seconds / size), unit);
      }
    }
    return "";
  }

  // Times arrive as UTC ISO 8601; show them in the viewer's zone.
  function localizeTimes(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const date = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      const absolute = date.toLocaleString();
      element.title = element.getAttribute("datetime");
      element.textContent = element.hasAttribute("data-relative")
        ? relative(date) + " (" + absolute + ")"
        : absolute;
    }
  }

  function applyFilters() {
    const body = document.getElementById("overview-body");
    if (!body) return;
    const state = document.getElementById("state-filter").value;
    const search = document.getElementById("search").value.trim().toLowerCase();
    let visible = 0;
    for (const row of body.rows) {
      const show = (!state || row.dataset.state === state) &&
        (!search || row.dataset.search.includes(search));
      row.hidden = !show;
      if (show) visible += 1;
    }
    document.getElementById("visible-count").textContent =
      visible + " of " + body.rows.length + " services";
  }

  async function refresh(table) {
    if (document.hidden) return;
    try {
      const response = await fetch(table.dataset.refreshUrl, {
        headers: { Accept: "text/html" }, credentials: "same-origin",
      });
      if (!response.ok) return;
      const holder = document.createElement("table");
      holder.innerHTML = await response.text();
      const fresh = holder.querySelector("#overview-body");
      if (!fresh) return;
      document.getElementById("overview-body").replaceWith(fresh);
      const stamp = document.getElementById("computed-at");
      stamp.setAttribute("datetime", fresh.dataset.computedAt);
      localizeTimes(document);
      applyFilters();
    } catch (error) {
      // The next tick tries again; a server restart must not break the page.
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    const table = document.getElementById("overview");
    if (!table) return;
    document.getElementById("state-filter").addEventListener("change", applyFilters);
    document.getElementById("search").addEventListener("input", applyFilters);
    applyFilters();
    const seconds = Number(table.dataset.refreshSeconds) || 15;
    window.setInterval(function () { refresh(table); }, seconds * 1000);
  });
})();
