// eventpipe web console: plain JavaScript, no build step. Every API call
// carries the token typed in the header form (kept in this tab's
// sessionStorage). The DOM is built with textContent only, never from
// HTML strings, so nothing an event or rule holds can run as script.

const main = document.getElementById("main");
const RULES = "/api/v1/task-trigger-rules";

// ---- helpers ---------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function token() { return sessionStorage.getItem("eventpipe-token") || ""; }

class APIError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : "HTTP " + status);
    this.status = status;
    this.details = (body && body.details) || [];
  }
}

async function api(method, path, body, headers = {}) {
  const opts = { method, headers: { ...headers } };
  if (token()) opts.headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!resp.ok) throw new APIError(resp.status, data);
  return { data, etag: resp.headers.get("ETag") };
}

function toast(msg) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 3000);
}

function errorBanner(err) {
  const box = h("div", { class: "banner error", "data-testid": "error" }, err.message);
  if (err.status === 401) box.append(h("div", {}, "Enter the API token in the header."));
  for (const d of err.details || []) box.append(h("div", { class: "mono" }, JSON.stringify(d)));
  return box;
}

function render(...nodes) { main.replaceChildren(...nodes); }

function when(t) { return t ? new Date(t).toLocaleString() : "–"; }

function statusCell(s, extra) { return h("td", { class: "status-" + s }, s, extra ? " (" + extra + ")" : ""); }

function table(headers, rows, attrs = {}) {
  return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

// ---- overview: live counts from /metrics -----------------------------------

function parseMetrics(text) {
  const sums = {};
  const byLabel = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const v = Number(m[3]);
    sums[m[1]] = (sums[m[1]] || 0) + v;
    if (m[2]) byLabel[m[1] + m[2]] = v;
  }
  return { sums, byLabel };
}

function labelSum(byLabel, name, label) {
  let n = 0;
  for (const [k, v] of Object.entries(byLabel)) if (k.startsWith(name + "{") && k.includes(label)) n += v;
  return n;
}

async function overview() {
  const cards = h("div", { class: "cards", "data-testid": "counts" });
  const note = h("p", { class: "muted" }, "Counts since the process started, refreshed every 5 s.");
  render(h("h2", {}, "Overview"), cards, note);
  const refresh = async () => {
    if (!cards.isConnected) return;
    let text;
    try {
      const resp = await fetch("/metrics");
      text = await resp.text();
    } catch (e) { cards.replaceChildren(errorBanner(e)); return; }
    const { sums, byLabel } = parseMetrics(text);
    const card = (label, value) => h("div", { class: "card" }, h("div", { class: "value" }, String(value ?? 0)), h("div", { class: "label" }, label));
    cards.replaceChildren(
      card("events handled", labelSum(byLabel, "message_processed_total", 'handler="trigger')),
      card("tasks triggered", sums.task_triggered_total),
      card("tasks succeeded", labelSum(byLabel, "task_executed_total", 'status="SUCCEEDED"')),
      card("tasks failed", labelSum(byLabel, "task_executed_total", 'status="FAILED"')),
      card("messages poisoned", sums.message_poisoned_total),
      card("history records written", sums.history_records_written_total),
      card("history records dropped", sums.history_records_dropped_total),
    );
    setTimeout(refresh, 5000);
  };
  refresh();
}

// ---- rules -----------------------------------------------------------------

async function rulesList() {
  render(h("h2", {}, "Rules"), h("p", {}, "Loading…"));
  let list;
  try { list = (await api("GET", RULES + "?page=0&size=500")).data; } catch (e) { render(h("h2", {}, "Rules"), errorBanner(e)); return; }
  const rows = list.items.map((r) => {
    const enabled = r.enabled === undefined || r.enabled;
    return h("tr", { "data-rule": r.ruleId },
      h("td", {}, h("a", { href: "#/rules/" + encodeURIComponent(r.ruleId) }, r.ruleId)),
      h("td", { class: "mono" }, r.eventType),
      h("td", { class: "mono" }, r.condition || "true"),
      h("td", {}, r.taskType),
      h("td", {}, "v" + r.version),
      h("td", { class: enabled ? "yes" : "no", "data-testid": "enabled" }, enabled ? "enabled" : "disabled"),
      h("td", {}, h("button", { onclick: () => toggle(r.ruleId, !enabled) }, enabled ? "Disable" : "Enable")));
  });
  render(h("h2", {}, "Rules"),
    table(["rule", "event type", "condition", "task type", "version", "state", ""], rows, { "data-testid": "rules" }),
    h("p", { class: "muted" }, list.total + " rules"),
    dryRunPanel());
}

async function toggle(id, enable) {
  try {
    await api("POST", RULES + "/" + encodeURIComponent(id) + (enable ? "/enable" : "/disable"));
    toast((enable ? "enabled " : "disabled ") + id);
  } catch (e) { toast(e.message); }
  route();
}

function dryRunPanel(ruleBody) {
  const area = h("textarea", { "data-testid": "dryrun-event", "aria-label": "event JSON" },
    JSON.stringify({ messageId: "console-test", eventType: "order.created", payload: { orderId: "o-1", amount: 1500 } }, null, 2));
  const out = h("div", {});
  const run = async () => {
    let ev;
    try { ev = JSON.parse(area.value); } catch (e) { out.replaceChildren(errorBanner(new Error("event: " + e.message))); return; }
    const body = { eventMessage: ev };
    if (ruleBody) {
      try { body.rule = ruleBody(); } catch (e) { out.replaceChildren(errorBanner(e)); return; }
    }
    try {
      const rep = (await api("POST", RULES + "/test", body)).data;
      out.replaceChildren(table(["rule", "enabled", "type matched", "condition", "task / error"],
        rep.explanations.map((x) => h("tr", {},
          h("td", {}, x.ruleId), h("td", { class: String(x.enabled) }, String(x.enabled)),
          h("td", { class: String(x.typeMatched) }, String(x.typeMatched)),
          h("td", { class: String(x.conditionResult) }, x.conditionResult === null ? "–" : String(x.conditionResult)),
          h("td", { class: "mono" }, x.error || (x.task ? x.task.taskName + " (" + x.task.taskType + ")" : ""))))));
    } catch (e) { out.replaceChildren(errorBanner(e)); }
  };
  return h("section", {}, h("h3", {}, ruleBody ? "Dry run this rule" : "Dry run an event against the live rules"),
    area, h("div", { class: "row" }, h("button", { onclick: run, "data-testid": "dryrun" }, "Dry run")), out);
}

const RULE_FIELDS = [
  ["ruleName", "text"], ["eventType", "text"], ["condition", "text"], ["taskName", "text"], ["taskType", "text"],
  ["parameters", "json"], ["priority", "select"], ["enabled", "checkbox"], ["description", "text"], ["partitionKey", "text"],
];

async function ruleView(id) {
  render(h("h2", {}, "Rule " + id), h("p", {}, "Loading…"));
  let rule, etag, hist = null;
  try {
    ({ data: rule, etag } = await api("GET", RULES + "/" + encodeURIComponent(id)));
  } catch (e) { render(h("h2", {}, "Rule " + id), errorBanner(e)); return; }
  try { hist = (await api("GET", RULES + "/" + encodeURIComponent(id) + "/history")).data; } catch (e) { hist = e; }

  const inputs = {};
  const errors = {};
  const form = h("form", { class: "rule", "data-testid": "rule-form" });
  for (const [name, kind] of RULE_FIELDS) {
    let input;
    if (kind === "json") input = h("textarea", { name, id: "f-" + name }, JSON.stringify(rule[name] || {}, null, 2));
    else if (kind === "checkbox") {
      input = h("input", { type: "checkbox", name, id: "f-" + name });
      input.checked = rule.enabled === undefined || rule.enabled;
    } else if (kind === "select") {
      input = h("select", { name, id: "f-" + name }, ["", "HIGH", "MEDIUM", "LOW"].map((p) => h("option", { value: p }, p || "(event's)")));
      input.value = (rule[name] || "").toUpperCase();
    } else {
      input = h("input", { type: "text", name, id: "f-" + name });
      input.value = rule[name] || "";
    }
    inputs[name] = input;
    errors[name] = h("div", { class: "field-error", "data-field-error": name });
    form.append(h("label", { for: "f-" + name }, name), h("div", { class: "field", "data-field": name }, input, errors[name]));
  }
  const formError = h("div", {});
  const collect = () => {
    const r = { ruleId: id };
    for (const [name, kind] of RULE_FIELDS) {
      const el = inputs[name];
      if (kind === "json") {
        try { r[name] = JSON.parse(el.value || "{}"); } catch (e) { throw new Error("parameters: " + e.message); }
      } else if (kind === "checkbox") r[name] = el.checked;
      else if (el.value !== "") r[name] = el.value;
    }
    return r;
  };
  const save = async (ev) => {
    ev.preventDefault();
    for (const [name] of RULE_FIELDS) { errors[name].textContent = ""; errors[name].parentElement.classList.remove("invalid"); }
    formError.replaceChildren();
    let body;
    try { body = collect(); } catch (e) { errors.parameters.textContent = e.message; return; }
    try {
      await api("PUT", RULES + "/" + encodeURIComponent(id), body, { "If-Match": etag });
      toast("saved " + id);
      route();
    } catch (e) {
      let placed = false;
      for (const d of e.details || []) {
        const top = (d.field || "").split(".")[0];
        if (errors[top]) {
          errors[top].textContent = (errors[top].textContent ? errors[top].textContent + "; " : "") + d.error;
          errors[top].parentElement.classList.add("invalid");
          placed = true;
        }
      }
      if (!placed || e.status !== 400) formError.replaceChildren(errorBanner(e));
    }
  };
  form.addEventListener("submit", save);
  form.append(h("span", {}), h("div", { class: "row" }, h("button", { type: "submit", class: "primary", "data-testid": "save" }, "Save"),
    h("span", { class: "muted" }, "version " + rule.version + ", updated " + when(rule.updatedAt) + " — saving sends If-Match " + etag)));

  let histNode;
  if (hist instanceof Error) histNode = h("p", { class: "muted" }, "No history: " + hist.message);
  else histNode = table(["version", "action", "by", "when", "changed", ""], hist.items.slice().reverse().map((c) => h("tr", {},
    h("td", {}, "v" + c.version), h("td", {}, c.action + (c.via ? " (" + c.via + ")" : "") + (c.restores ? " of v" + c.restores : "")),
    h("td", {}, c.actor), h("td", {}, when(c.at)), h("td", { class: "mono" }, (c.changed || []).join(", ")),
    h("td", {}, c.rule && c.version !== rule.version ? h("button", { onclick: () => rollback(id, c.version, etag) }, "Roll back to v" + c.version) : ""))),
  { "data-testid": "history" });

  render(h("h2", {}, "Rule " + id), formError, form, h("h3", {}, "History"), histNode, dryRunPanel(collect));
}

async function rollback(id, version, etag) {
  try {
    await api("POST", RULES + "/" + encodeURIComponent(id) + "/rollback", { version }, { "If-Match": etag });
    toast("rolled " + id + " back to v" + version);
  } catch (e) { toast(e.message); }
  route();
}

// ---- events ----------------------------------------------------------------

function eventSearch(id) {
  const input = h("input", { type: "text", placeholder: "event id (messageId)", "data-testid": "event-id", size: 40 });
  input.value = id || "";
  const form = h("form", { class: "row" }, input, h("button", { type: "submit", class: "primary" }, "Show timeline"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/events/" + encodeURIComponent(input.value.trim()); });
  return form;
}

async function eventView(id) {
  if (!id) { render(h("h2", {}, "Events"), eventSearch(), h("p", { class: "muted" }, "What happened to an event: the rules of its type and what each did, its tasks, retries and results.")); return; }
  render(h("h2", {}, "Event " + id), eventSearch(id), h("p", {}, "Loading…"));
  let ev;
  try { ev = (await api("GET", "/api/v1/events/" + encodeURIComponent(id))).data; } catch (e) { render(h("h2", {}, "Event " + id), eventSearch(id), errorBanner(e)); return; }
  const head = h("div", { class: "banner" },
    h("div", {}, "type ", h("b", {}, ev.eventType || "–"), ev.source ? " from " + ev.source : "", " · correlation ", h("span", { class: "mono" }, ev.correlationId || "–")),
    h("div", { class: "muted" }, ev.receivedAt ? "received " + when(ev.receivedAt) + " · handled " + ev.deliveries + " time(s)" : "the event's own record is not in the history"),
    ev.error ? h("div", { class: "error" }, ev.error) : "");
  const rules = table(["rule", "version", "enabled", "condition", "task", "error"], ev.rules.map((r) => h("tr", {},
    h("td", {}, h("a", { href: "#/rules/" + encodeURIComponent(r.ruleId) }, r.ruleId)), h("td", {}, r.version ? "v" + r.version : "–"),
    h("td", { class: String(r.enabled) }, String(r.enabled)),
    h("td", { class: String(r.conditionResult) }, r.conditionResult === null ? "–" : String(r.conditionResult)),
    h("td", { class: "mono" }, r.taskId || "–"), h("td", { class: "error" }, r.error || ""))), { "data-testid": "event-rules" });
  const taskRows = [];
  for (const t of ev.tasks) {
    taskRows.push(h("tr", { "data-task": t.taskId },
      h("td", { class: "mono" }, t.taskId), h("td", {}, t.ruleId), h("td", {}, t.taskName + " (" + t.taskType + ")"),
      statusCell(t.status, t.poisonKind ? "poisoned: " + t.poisonKind : ""), h("td", {}, String(t.attempts)),
      h("td", {}, t.finishedAt ? t.durationMs + " ms" : "–"), h("td", { class: t.error ? "mono error" : "mono" }, t.error || t.output || "")));
    for (const r of t.retries || []) {
      taskRows.push(h("tr", { class: "muted" }, h("td", {}), h("td", {}), h("td", {}, "retry " + r.attempt), h("td", { class: "status-RETRYING" }, "FAILED"),
        h("td", {}), h("td", {}, r.durationMs + " ms"), h("td", { class: "mono" }, r.error)));
    }
  }
  render(h("h2", {}, "Event " + id), eventSearch(id), head,
    h("h3", {}, "Rules of its type"), ev.rules.length ? rules : h("p", { class: "muted" }, "No rule has this event type."),
    h("h3", {}, "Tasks"), ev.tasks.length ? table(["task", "rule", "name", "status", "attempts", "duration", "error / output"], taskRows, { "data-testid": "event-tasks" }) : h("p", { class: "muted" }, "No tasks."),
    ev.payload ? h("div", {}, h("h3", {}, "Event as received" + (ev.payloadBytes > ev.payload.length ? " (start)" : "")), h("pre", {}, ev.payload)) : "");
}

// ---- failures by rule ------------------------------------------------------

async function failures() {
  render(h("h2", {}, "Recent failures"), h("p", {}, "Loading…"));
  let page;
  try { page = (await api("GET", "/api/v1/tasks?status=FAILED&since=24h&limit=500")).data; } catch (e) { render(h("h2", {}, "Recent failures"), errorBanner(e)); return; }
  const byRule = new Map();
  for (const t of page.items) byRule.set(t.ruleId, (byRule.get(t.ruleId) || 0) + 1);
  render(h("h2", {}, "Recent failures (24 h)"),
    table(["rule", "failed tasks"], [...byRule.entries()].sort((a, b) => b[1] - a[1]).map(([r, n]) => h("tr", {},
      h("td", {}, h("a", { href: "#/rules/" + encodeURIComponent(r) }, r)), h("td", {}, String(n)))), { "data-testid": "failures-by-rule" }),
    h("h3", {}, "Failed tasks" + (page.next ? " (latest 500)" : "")),
    table(["when", "task", "rule", "event", "attempts", "error"], page.items.map((t) => h("tr", {},
      h("td", {}, when(t.createdAt)), h("td", { class: "mono" }, t.taskId), h("td", {}, t.ruleId),
      h("td", {}, h("a", { href: "#/events/" + encodeURIComponent(t.eventId) }, t.eventId)),
      h("td", {}, String(t.attempts)), h("td", { class: "mono error" }, t.error)))));
}

// ---- dead letters ----------------------------------------------------------

function payloadText(b64) {
  try { return new TextDecoder().decode(Uint8Array.from(atob(b64 || ""), (c) => c.charCodeAt(0))); } catch { return "(binary)"; }
}

async function dlq() {
  render(h("h2", {}, "Dead letters"), h("p", {}, "Loading…"));
  let list;
  try { list = (await api("GET", "/api/v1/dlq?limit=200")).data; } catch (e) { render(h("h2", {}, "Dead letters"), errorBanner(e)); return; }
  const sections = list.topics.map((t) => {
    const boxes = [];
    const rows = t.items.map((m) => {
      const box = h("input", { type: "checkbox", value: m.position, "aria-label": "select " + m.uuid });
      boxes.push(box);
      const text = payloadText(m.payload);
      return h("tr", { "data-uuid": m.uuid }, h("td", {}, box), h("td", {}, m.position), h("td", { class: "mono" }, m.uuid),
        h("td", {}, m.reasonKind || "–"), h("td", { class: "mono error" }, m.reason), h("td", { class: "mono" }, text.length > 160 ? text.slice(0, 160) + "…" : text));
    });
    const replay = async () => {
      const positions = boxes.filter((b) => b.checked).map((b) => b.value);
      if (!positions.length) { toast("select messages to replay"); return; }
      try {
        const res = (await api("POST", "/api/v1/dlq/replay", { topic: t.topic, positions })).data;
        toast("replayed " + res.replayed.length + (res.skipped.length ? ", skipped " + res.skipped.length : ""));
      } catch (e) { toast(e.message); }
      setTimeout(dlq, 300);
    };
    return h("section", { "data-topic": t.topic }, h("h3", {}, t.topic + " — " + t.waiting + " waiting"),
      t.items.length ? table(["", "position", "uuid", "kind", "reason", "payload"], rows) : h("p", { class: "muted" }, "Empty."),
      t.items.length ? h("div", { class: "row" }, h("button", { class: "primary", onclick: replay, "data-testid": "replay" }, "Replay selected to " + t.topic.replace(/\.dlq$/, ""))) : "");
  });
  render(h("h2", {}, "Dead letters"), h("p", { class: "muted" }, "Replay sends a message back to the topic it was poisoned from; fix the cause first, or it is poisoned again."), ...sections);
}

// ---- routing ---------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === page);
  switch (page) {
    case "rules": return parts[1] ? ruleView(parts.slice(1).join("/")) : rulesList();
    case "events": return eventView(parts.slice(1).join("/"));
    case "failures": return failures();
    case "dlq": return dlq();
    default: return overview();
  }
}

document.getElementById("token").value = token();
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("eventpipe-token", document.getElementById("token").value.trim());
  toast("token set for this tab");
  route();
});
window.addEventListener("hashchange", route);
route();
