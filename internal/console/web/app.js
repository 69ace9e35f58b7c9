// The meshcni console page: renders the state the handler streams
// (api/events, Server-Sent Events) and sends the two settings it edits.
// URLs are relative so the page works behind the API server's service proxy.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;   // the last state received
let dirty = false;  // the user changed the form since it was last filled

function text(id, value) { $(id).textContent = value; }

function show(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function excludedChoice() {
  return Array.from(document.querySelectorAll("#ns-list input:checked")).map((i) => i.value).sort();
}

// fillForm replaces the form's values with the state's, unless the user is
// editing: a change made elsewhere must not wipe what they are typing.
function fillForm(s) {
  const ro = !s.canUpdate;
  $("enabled").disabled = ro;
  if (!dirty) $("enabled").checked = s.enabled;
  const chosen = new Set(dirty ? excludedChoice() : s.excludeNamespaces);
  // Excluded namespaces that do not exist (yet) stay listed and chosen.
  const names = Array.from(new Set([...s.namespaces, ...s.excludeNamespaces])).sort();
  const list = $("ns-list");
  const shown = Array.from(list.querySelectorAll("input"), (i) => i.value);
  if (shown.join("\n") !== names.join("\n")) {
    // A namespace came or went: rebuild the list, keeping the focus.
    const focused = document.activeElement ? document.activeElement.dataset.ns : undefined;
    list.replaceChildren(...names.map((ns) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = ns;
      box.dataset.ns = ns;
      box.addEventListener("change", markDirty);
      const name = document.createElement("span");
      name.textContent = ns;
      label.append(box, name);
      return label;
    }));
    if (focused) {
      const again = list.querySelector(`input[data-ns="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }
  // Set each box in place, so the elements a user (or a screen reader, or
  // a test) holds stay the same across live updates.
  for (const box of list.querySelectorAll("input")) {
    box.checked = chosen.has(box.value);
    box.disabled = ro;
    const name = box.nextElementSibling;
    const gone = !s.namespaces.includes(box.value);
    name.className = gone ? "gone" : "";
    name.title = gone ? "no such namespace in the cluster now" : "";
  }
  show("ns-error", s.namespacesError);
  updateButton();
}

function updateButton() {
  $("update").disabled = !state || !state.canUpdate || (!dirty && state.exists);
}

function markDirty() {
  dirty = true;
  text("result", "");
  updateButton();
}

function render(s) {
  state = s;
  text("who", s.user ? "Signed in as " + s.user : "");
  show("readonly", s.canUpdate ? "" : s.readOnlyReason);
  show("error", s.error);
  const phase = $("phase");
  phase.textContent = s.phase === "NotInstalled" ? "Not installed" : s.phase || "Unknown";
  phase.dataset.phase = s.phase || "Unknown";
  let message = s.message || "";
  if (!message && s.phase === "Running") message = "Every agent runs the current settings.";
  if (!message && s.phase === "Disabled") message = "The plug-in is switched off.";
  text("message", message);
  text("ready-nodes", s.readyNodes || "–");
  text("hash", s.settingsHash || "–");
  fillForm(s);
  renderNodes(s);
}

function renderNodes(s) {
  const body = $("nodes");
  if (!s.nodes.length) {
    const td = document.createElement("td");
    td.colSpan = 4;
    td.className = "empty";
    td.textContent = s.nodesError ? "–" : "No agent pods";
    const tr = document.createElement("tr");
    tr.append(td);
    body.replaceChildren(tr);
  } else {
    body.replaceChildren(...s.nodes.map((n) => {
      const tr = document.createElement("tr");
      const cell = (...children) => { const td = document.createElement("td"); td.append(...children); tr.append(td); return td; };
      cell(n.node);
      cell(n.pod);
      const dot = document.createElement("span");
      dot.className = n.ready ? "dot ok" : "dot";
      dot.setAttribute("aria-hidden", "true");
      cell(dot, n.state);
      const code = document.createElement("code");
      code.textContent = n.hash || "–";
      const tag = document.createElement("span");
      tag.className = n.current ? "tag current" : "tag old";
      tag.textContent = n.current ? "current" : (s.settingsHash ? "outdated" : "pending");
      cell(code, tag);
      return tr;
    }));
  }
  show("nodes-error", s.nodesError);
}

async function submit(event) {
  event.preventDefault();
  if (!state || !state.canUpdate) return;
  const button = $("update");
  button.disabled = true;
  const result = $("result");
  result.className = "";
  result.textContent = "Updating…";
  const body = {
    enabled: $("enabled").checked,
    excludeNamespaces: excludedChoice(),
    resourceVersion: state.resourceVersion || "",
  };
  try {
    const resp = await fetch("api/settings", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Meshcni-Console": "1" },
      body: JSON.stringify(body),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    dirty = false;
    result.textContent = "Settings saved. The status follows the rollout.";
    render(data);
  } catch (err) {
    result.className = "bad";
    result.textContent = "Not saved: " + err.message;
    if (String(err.message).includes("changed meanwhile")) {
      dirty = false;
      load();
    }
    updateButton();
  }
}

async function load() {
  const resp = await fetch("api/state");
  const data = await resp.json();
  if (!resp.ok) {
    show("error", data.error || resp.statusText);
    return;
  }
  render(data);
}

function stream() {
  const events = new EventSource("api/events");
  events.addEventListener("state", (e) => render(JSON.parse(e.data)));
  events.onerror = () => {
    // EventSource reconnects by itself; a 401 closes it for good.
    if (events.readyState === EventSource.CLOSED) load().catch((err) => show("error", err.message));
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("settings").addEventListener("submit", submit);
  $("enabled").addEventListener("change", markDirty);
  stream();
});
