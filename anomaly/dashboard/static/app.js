// Keyboard shortcuts of the dashboard (no framework, no network requests of its own).
// Record page: c / f / u label (Shift: label, then next record), j n / k p next / previous,
// e or / note, b queue. Queue: j / k move, Enter or o open, n / p / f next / previous / first
// page, x select, Shift+J / Shift+K extend the selection, Shift+C / F / U label the selected
// records, Shift+A assign them. Everywhere: s search.
(function () {
  "use strict";
  const page = document.body.dataset.page;
  const help = document.getElementById("help");
  let pendingG = false;

  function go(id) {
    const link = document.getElementById(id);
    if (link) { window.location.href = link.href; return true; }
    return false;
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" ||
      target.tagName === "SELECT" || target.isContentEditable);
  }

  function review(label, thenNext) {
    const form = document.getElementById("review-form");
    if (!form) { return false; }
    document.getElementById("then").value = thenNext ? "next" : "stay";
    const button = form.querySelector('button[value="' + label + '"]');
    form.requestSubmit(button);
    return true;
  }

  // queue: a movable selection over the rows
  const rows = Array.from(document.querySelectorAll("table.queue tbody tr"));
  let selected = rows.length ? 0 : -1;
  function select(i) {
    if (!rows.length) { return; }
    if (selected >= 0) { rows[selected].classList.remove("selected"); }
    selected = Math.max(0, Math.min(rows.length - 1, i));
    rows[selected].classList.add("selected");
    rows[selected].scrollIntoView({ block: "nearest" });
  }
  if (rows.length) { select(0); }
  rows.forEach(function (row, i) {
    row.addEventListener("click", function (event) {
      const tag = event.target.tagName;
      if (tag === "INPUT" || (tag === "TD" && event.target.classList.contains("pick"))) {
        if (tag === "TD") { toggle(i); }
        select(i);
        return;
      }
      if (tag !== "A") { window.location.href = row.dataset.href; }
      select(i);
    });
  });

  // queue: records picked for a bulk action (checkboxes in the first column)
  function box(i) { return rows[i] ? rows[i].querySelector('input[name="key"]') : null; }
  function counted() {
    const n = rows.filter(function (_, i) { return box(i) && box(i).checked; }).length;
    const count = document.getElementById("selected-count");
    if (count) { count.textContent = n + " selected"; }
    rows.forEach(function (row, i) { row.classList.toggle("picked", !!(box(i) && box(i).checked)); });
    return n;
  }
  function toggle(i, value) {
    const b = box(i);
    if (!b) { return; }
    b.checked = value === undefined ? !b.checked : value;
    counted();
  }
  rows.forEach(function (_, i) { if (box(i)) { box(i).addEventListener("change", counted); } });
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      rows.forEach(function (_, i) { toggle(i, all.checked); });
    });
  }
  function bulk(id) {
    const button = document.getElementById(id);
    if (!button || counted() === 0) { return false; }
    document.getElementById("bulk").requestSubmit(button);
    return true;
  }

  // filters: leave empty fields out of the URL (short links; an empty date is no date)
  const filters = document.getElementById("filters");
  if (filters) {
    filters.addEventListener("submit", function () {
      filters.querySelectorAll("input, select").forEach(function (field) {
        if (field.name && field.value === "") { field.disabled = true; }
      });
    });
  }

  document.getElementById("help-button").addEventListener("click", function () {
    help.hidden = !help.hidden;
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Escape") {
      help.hidden = true;
      if (typing(event.target)) { event.target.blur(); }
      return;
    }
    if (typing(event.target)) { return; }
    const key = event.key;
    let handled = false;
    if (pendingG) {
      pendingG = false;
      const target = { q: "/queue", o: "/overview", b: "/batches", m: "/model" }[key];
      if (target) { window.location.href = target; event.preventDefault(); }
      return;
    }
    if (key === "?") { help.hidden = !help.hidden; handled = true; }
    else if (key === "g") { pendingG = true; handled = true; }
    else if (key === "s") {
      const search = document.getElementById("search");
      if (search) { search.focus(); handled = true; }
    }
    else if (page === "record") {
      const labels = { c: "confirmed", f: "false_positive", u: "unsure" };
      const lower = key.toLowerCase();
      if (labels[lower]) { handled = review(labels[lower], key !== lower); }
      else if (key === "j" || key === "n") { handled = go("next-record"); }
      else if (key === "k" || key === "p") { handled = go("prev-record"); }
      else if (key === "b") { handled = go("back"); }
      else if (key === "e" || key === "/") {
        const note = document.getElementById("note");
        if (note) { note.focus(); handled = true; }
      }
    } else if (page === "queue") {
      if (key === "j" || key === "ArrowDown") { select(selected + 1); handled = rows.length > 0; }
      else if (key === "k" || key === "ArrowUp") { select(selected - 1); handled = rows.length > 0; }
      else if (key === "x" && selected >= 0) { toggle(selected); handled = true; }
      else if ((key === "J" || key === "K") && selected >= 0) {
        toggle(selected, true);
        select(selected + (key === "J" ? 1 : -1));
        toggle(selected, true);
        handled = true;
      }
      else if (key === "C") { handled = bulk("bulk-confirmed"); }
      else if (key === "F") { handled = bulk("bulk-false-positive"); }
      else if (key === "U") { handled = bulk("bulk-unsure"); }
      else if (key === "A") { handled = bulk("bulk-assign"); }
      else if (key === "p") { handled = go("prev-page"); }
      else if ((key === "Enter" || key === "o") && selected >= 0) {
        window.location.href = rows[selected].dataset.href; handled = true;
      }
      else if (key === "n") { handled = go("next-page"); }
      else if (key === "f") { handled = go("first-page"); }
      else if (key === "/") {
        const first = document.querySelector("#filters select");
        if (first) { first.focus(); handled = true; }
      }
    }
    if (handled) { event.preventDefault(); }
  });
})();
