// tollgate console: fills the page shell the admin listener rendered (body[data-page]) from the documented
// /admin/* JSON endpoints. Plain JavaScript, no build step; charts by Chart.js (window.Chart, vendored).
// Everything read from the server is put into the page as text, never as HTML.

const content = document.getElementById("content");
const csrf = document.querySelector('meta[name="tollgate-csrf"]')?.content ?? "";
const integer = new Intl.NumberFormat("en-US");
const dollars = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 2 });
const cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 4 });
const palette = ["#2457c5", "#e07b39", "#3a9e6b", "#b42318", "#7a5af8", "#0e9384", "#c11574", "#667085"];

/** An element with attributes (`class`, `data-*`, … ; `text` sets its text) and children (nodes or strings). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** GET (or POST) an /admin/ endpoint as JSON; a lost session goes back to the sign-in form. */
async function api(path, options = {}) {
  const headers = { accept: "application/json" };
  if (options.method && options.method !== "GET") headers["x-tollgate-csrf"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("signed out");
  }
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error ?? `${response.status} ${response.statusText}`);
  return body;
}

function card(label, value, sub) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }),
    sub ? el("div", { class: "sub", text: sub }) : null);
}

/** A table: `columns` are [title, (row) => cell text or node, "number"?]. */
function table(columns, rows, empty = "Nothing yet.") {
  if (rows.length === 0) return el("p", { class: "muted", text: empty });
  const head = el("tr", {}, columns.map(([title, , kind]) => el("th", { class: kind, text: title })));
  const body = rows.map((row) => el("tr", {}, columns.map(([, cell, kind]) => {
    const value = cell(row);
    return el("td", { class: kind }, value instanceof Node ? value : String(value ?? ""));
  })));
  return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
}

/** A Chart.js chart in a new panel; the canvas carries data-points (how many values it draws). */
function chart(type, labels, datasets, options = {}, wide = false) {
  const canvas = el("canvas", { role: "img", "aria-label": options.title ?? type });
  const panel = el("div", { class: wide ? "chart wide" : "chart" }, canvas);
  const points = datasets.reduce((sum, dataset) => sum + dataset.data.length, 0);
  canvas.dataset.points = String(points);
  const config = {
    type,
    data: {
      labels,
      datasets: datasets.map((dataset, index) => ({
        backgroundColor: type === "doughnut" ? palette : palette[index % palette.length],
        borderColor: type === "doughnut" ? "#fff" : palette[index % palette.length],
        borderWidth: type === "line" ? 2 : 1,
        pointRadius: 0,
        tension: 0.2,
        ...dataset,
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      indexAxis: options.horizontal ? "y" : "x",
      plugins: {
        title: { display: Boolean(options.title), text: options.title },
        legend: { display: datasets.length > 1 || type === "doughnut", position: "bottom" },
      },
      scales: type === "doughnut" ? {} : {
        // Counts get whole-number ticks (precision is ignored by the category axis).
        x: { stacked: Boolean(options.stacked), beginAtZero: true,
          ticks: { maxTicksLimit: 12, precision: options.integer ? 0 : undefined } },
        y: { stacked: Boolean(options.stacked), beginAtZero: true, ticks: { precision: options.integer ? 0 : undefined } },
      },
    },
  };
  // The panel must be in the document before Chart.js measures it.
  queueMicrotask(() => new window.Chart(canvas, config));
  return panel;
}

/** A table cell kind for times and ids: kept on one line. */
const line = "nowrap";

function time(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function clock(seconds) {
  const at = new Date(seconds * 1000);
  return `${String(at.getUTCHours()).padStart(2, "0")}:${String(at.getUTCMinutes()).padStart(2, "0")}`;
}

function select(name, choices, current, onChange) {
  const node = el("select", { name, "aria-label": name },
    choices.map(([value, label]) => el("option", { value, selected: value === current, text: label })));
  node.addEventListener("change", () => onChange(node.value));
  return node;
}

function show(...nodes) {
  content.replaceChildren(...nodes.flat());
}

// ---- pages ------------------------------------------------------------------------------------------------------

async function overview(minutes = "180") {
  const data = await api(`/admin/overview?minutes=${minutes}`);
  const kinds = [["requests", "Requests"], ["tunnels", "Tunnels"], ["denials", "Denials"], ["errors", "Errors"]];
  show(
    el("div", { class: "toolbar" }, "Window", select("minutes", [["60", "1 hour"], ["180", "3 hours"], ["720", "12 hours"],
      ["1440", "24 hours"]], minutes, overview), el("span", { class: "muted", text: `as of ${time(data.now)}` })),
    el("div", { class: "cards" },
      kinds.map(([key, label]) => card(label, integer.format(data.last_hour[key]),
        `last hour · ${integer.format(data.last_minute[key])} this minute · ${integer.format(data.totals[key])} since start`)),
      card("Open tunnels", integer.format(data.tunnels_active), "now"),
      card("Config version", String(data.config_version), "reloads since start + 1")),
    el("h2", { text: "Per minute (UTC)" }),
    el("div", { class: "charts" },
      chart("bar", data.minutes.map((minute) => clock(minute.at)),
        kinds.map(([key, label]) => ({ label, data: data.minutes.map((minute) => minute[key]) })),
        { title: "Requests, tunnels, denials and errors per minute", integer: true }, true)),
  );
}

/** Sums usage rows by one key. */
function sumBy(rows, key) {
  const sums = new Map();
  for (const row of rows) {
    const name = typeof key === "function" ? key(row) : row[key];
    const sum = sums.get(name) ?? { name, requests: 0, cost_usd: 0, input_tokens: 0, output_tokens: 0,
      cache_creation_input_tokens: 0, cache_read_input_tokens: 0 };
    for (const field of ["requests", "cost_usd", "input_tokens", "output_tokens", "cache_creation_input_tokens",
      "cache_read_input_tokens"]) sum[field] += row[field] ?? 0;
    sums.set(name, sum);
  }
  return [...sums.values()].sort((a, b) => b.cost_usd - a.cost_usd || a.name.localeCompare(b.name));
}

async function spend(since = "30d") {
  const data = await api(`/admin/usage?since=${since}`);
  const rows = data.rows;
  const teams = sumBy(rows, "team");
  const users = sumBy(rows, (row) => `${row.user} (${row.team})`).slice(0, 15);
  const models = sumBy(rows, "model");
  const total = data.total;
  show(
    el("div", { class: "toolbar" }, "Since", select("since", [["1d", "1 day"], ["7d", "7 days"], ["30d", "30 days"],
      ["90d", "90 days"]], since, spend), el("span", { class: "muted", text: `from ${time(data.since)}` })),
    el("div", { class: "cards" },
      card("Spend", dollars.format(total.cost_usd), `${integer.format(total.requests)} metered requests`),
      card("Input tokens", integer.format(total.input_tokens)),
      card("Output tokens", integer.format(total.output_tokens)),
      card("Cache reads", integer.format(total.cache_read_input_tokens)),
      card("Cache writes", integer.format(total.cache_creation_input_tokens))),
    el("div", { class: "charts" },
      chart("bar", teams.map((team) => team.name), [{ label: "USD", data: teams.map((team) => team.cost_usd) }],
        { title: "Spend per team (USD)" }),
      chart("doughnut", models.map((model) => model.name), [{ label: "USD", data: models.map((model) => model.cost_usd) }],
        { title: "Spend per model (USD)" }),
      chart("bar", users.map((user) => user.name), [{ label: "USD", data: users.map((user) => user.cost_usd) }],
        { title: "Top users by spend (USD)", horizontal: true }),
      chart("bar", models.map((model) => model.name), [
        { label: "input", data: models.map((model) => model.input_tokens) },
        { label: "output", data: models.map((model) => model.output_tokens) },
        { label: "cache write", data: models.map((model) => model.cache_creation_input_tokens) },
        { label: "cache read", data: models.map((model) => model.cache_read_input_tokens) },
      ], { title: "Tokens per model", integer: true, stacked: true })),
    el("h2", { text: "By team, user and model" }),
    table([
      ["Team", (row) => row.team], ["User", (row) => row.user], ["Model", (row) => row.model],
      ["Requests", (row) => integer.format(row.requests), "number"],
      ["Input", (row) => integer.format(row.input_tokens), "number"],
      ["Output", (row) => integer.format(row.output_tokens), "number"],
      ["Cost", (row) => cents.format(row.cost_usd), "number"],
    ], rows.slice(0, 200), "No metered requests in this window."),
  );
}

function usedBar(ratio) {
  const level = ratio >= 1 ? "bar full" : ratio >= 0.8 ? "bar high" : "bar";
  const fill = el("span");
  // CSSOM, not a style attribute: allowed by the console's Content-Security-Policy.
  fill.style.width = `${Math.min(100, Math.max(0, ratio * 100)).toFixed(1)}%`;
  return el("div", { class: level, title: `${(ratio * 100).toFixed(1)}% used` }, fill);
}

async function budgets() {
  const data = await api("/admin/budgets");
  const rows = data.budgets;
  const name = (row) => row.user ? `${row.user} (${row.team})` : row.team ?? "organisation";
  const outlook = (row) => row.outlook === "spent" ? el("span", { class: "deny", text: "spent" })
    : row.outlook === "runs_out" ? el("span", { class: "warn", text: `runs out ${time(row.runs_out_at)}` })
    : el("span", { class: "ok", text: "lasts the period" });
  show(
    el("p", { class: "muted", text: `As of ${time(data.now)}; today's rate from the ${data.rate_from === "audit_log" ? "audit log" : "spend counters"}.` }),
    rows.length ? el("div", { class: "charts" },
      chart("bar", rows.map((row) => `${row.scope} ${name(row)}`), [
        { label: "spent", data: rows.map((row) => row.spent_usd) },
        { label: "left", data: rows.map((row) => row.left_usd) },
      ], { title: "Budgets (USD)", horizontal: true, stacked: true }, true)) : null,
    el("h2", { text: "Budgets" }),
    table([
      ["Scope", (row) => row.scope], ["Who", name],
      ["Limit", (row) => dollars.format(row.limit_usd), "number"],
      ["Spent", (row) => cents.format(row.spent_usd), "number"],
      ["Left", (row) => cents.format(row.left_usd), "number"],
      ["Used", (row) => usedBar(row.used_ratio)],
      ["Today", (row) => cents.format(row.today_usd), "number"],
      ["Rate / hour", (row) => cents.format(row.rate_usd_per_hour), "number"],
      ["At today's rate", outlook],
      ["Period ends", (row) => time(row.period_ends_at), line],
    ], rows, "No budgets are configured (teams.*.budget, budgets)."),
  );
}

async function denials() {
  const data = await api("/admin/denials?limit=200");
  const rules = Object.entries(data.by_rule).sort((a, b) => b[1] - a[1]).slice(0, 20);
  const detectors = Object.entries(data.by_detector).sort((a, b) => b[1] - a[1]);
  show(
    el("p", { class: "muted", text: data.since ? `Records since ${time(data.since)} (the last ${integer.format(data.bytes_read)} bytes of the audit log).` : "The audit log is empty." }),
    el("div", { class: "charts" },
      chart("bar", rules.map(([rule]) => rule), [{ label: "denials", data: rules.map(([, count]) => count) }],
        { title: "Denials by rule", integer: true, horizontal: true }),
      chart("bar", detectors.map(([detector]) => detector), [{ label: "matches", data: detectors.map(([, count]) => count) }],
        { title: "DLP matches by detector", integer: true })),
    el("h2", { text: "Latest" }),
    table([
      ["Time", (row) => time(row.ts), line], ["User", (row) => row.user ?? "-"], ["Team", (row) => row.team ?? "-"],
      ["What", (row) => row.action ? `${row.action} ${row.target ?? ""}` : `${row.method ?? ""} ${row.host ?? ""}${row.path ?? ""}`],
      ["Decision", (row) => el("span", { class: row.decision === "deny" ? "deny" : "warn", text: row.decision ?? "" })],
      ["Rule", (row) => row.rule ?? ""], ["DLP", (row) => row.dlp.join(", ")], ["Status", (row) => row.status ?? "", "number"],
    ], data.rows, "No denials or DLP matches in the audit log's tail."),
  );
}

async function timeline(id, into) {
  into.replaceChildren(el("p", { class: "loading", text: "Loading…" }));
  try {
    const data = await api(`/admin/sessions/${encodeURIComponent(id)}`);
    into.replaceChildren(
      el("h2", { text: `Session ${id}` }),
      table([
        ["Time", (row) => time(row.ts), line], ["Entry", (row) => row.entry],
        ["What", (row) => row.entry === "action" ? row.action : row.model ?? ""],
        ["Tool", (row) => row.tool ?? ""], ["Target", (row) => row.target ?? ""],
        ["Decision", (row) => el("span", { class: row.decision === "deny" ? "deny" : "", text: row.decision ?? "" })],
        ["Result", (row) => row.outcome ?? row.status ?? ""], ["Rule", (row) => row.rule ?? ""],
        ["Cost", (row) => row.cost_usd != null ? cents.format(row.cost_usd) : "", "number"],
      ], data.entries));
  } catch (error) {
    into.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

async function sessions(since = "1d") {
  const data = await api(`/admin/sessions?since=${since}`);
  const top = [...data.sessions].sort((a, b) => b.actions - a.actions || b.requests - a.requests).slice(0, 15);
  const detail = el("div", { id: "timeline" });
  const link = (row) => {
    const anchor = el("a", { href: `#${encodeURIComponent(row.session)}`, text: row.session });
    anchor.addEventListener("click", (event) => {
      event.preventDefault();
      timeline(row.session, detail);
    });
    return anchor;
  };
  show(
    el("div", { class: "toolbar" }, "Since", select("since", [["1d", "1 day"], ["7d", "7 days"], ["30d", "30 days"]], since, sessions)),
    top.length ? el("div", { class: "charts" },
      chart("bar", top.map((row) => `${row.user} ${row.session.slice(0, 8)}`), [
        { label: "requests", data: top.map((row) => row.requests) },
        { label: "actions", data: top.map((row) => row.actions) },
        { label: "denials", data: top.map((row) => row.denials) },
      ], { title: "Requests and agent actions per session", integer: true, horizontal: true }, true)) : null,
    table([
      ["Session", link, line], ["User", (row) => row.user], ["Team", (row) => row.team ?? "-"], ["Client", (row) => row.client ?? ""],
      ["First", (row) => time(row.first), line], ["Last", (row) => time(row.last), line],
      ["Requests", (row) => integer.format(row.requests), "number"], ["Actions", (row) => integer.format(row.actions), "number"],
      ["Denials", (row) => integer.format(row.denials), "number"], ["Alerts", (row) => integer.format(row.alerts), "number"],
      ["Cost", (row) => cents.format(row.cost_usd), "number"],
    ], data.sessions, "No sessions in this window."),
    detail,
  );
  // The session named in the address, else the one with the most agent actions.
  if (top.length > 0) timeline(decodeURIComponent(window.location.hash.slice(1)) || top[0].session, detail);
}

async function fleet() {
  const data = await api("/admin/fleet");
  const versions = new Map();
  for (const user of data.users) {
    for (const client of user.clients) {
      const key = `${client.client} ${client.version}`;
      versions.set(key, (versions.get(key) ?? 0) + 1);
    }
  }
  const pairs = [...versions.entries()].sort((a, b) => b[1] - a[1]).slice(0, 20);
  const current = (row) => row.current === null ? "-" : el("span", { class: row.current ? "ok" : "warn", text: row.current ? "yes" : "no" });
  show(
    el("div", { class: "cards" }, card("Users", integer.format(data.users.length)),
      card("Client versions", integer.format(versions.size)),
      card("Not current", integer.format(data.users.filter((user) => user.current === false).length), "managed settings")),
    pairs.length ? el("div", { class: "charts" },
      chart("bar", pairs.map(([pair]) => pair), [{ label: "users", data: pairs.map(([, users]) => users) }],
        { title: "Users per client version", integer: true })) : null,
    el("h2", { text: "Users" }),
    table([
      ["User", (row) => row.user], ["Teams", (row) => row.teams.join(", ")],
      ["Clients", (row) => row.clients.map((client) => `${client.client}/${client.version}`).join(", ")],
      ["Last seen", (row) => time(row.last_seen), line], ["Sessions", (row) => integer.format(row.sessions), "number"],
      ["Settings", (row) => row.settings ? row.settings.checksum.slice(0, 12) : "-"], ["Current", current],
    ], data.users, "No clients seen yet."),
  );
}

/** The running config and the reload button; `notice`, when given, says how the last reload went. */
async function config(notice = null) {
  const data = await api("/admin/config");
  const result = el("div", { id: "reload-result" }, notice);
  const button = el("button", { id: "reload", class: "primary", type: "button", text: "Reload the config" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.replaceChildren(el("p", { class: "loading", text: "Reloading…" }));
    try {
      const report = await api("/admin/reload", { method: "POST" });
      const restart = report.needs_restart.length ? `; needs a restart: ${report.needs_restart.join(", ")}` : "";
      await config(el("p", { class: "ok reloaded", text: `Reloaded: version ${report.version}, sha256 ` +
        `${report.sha256.slice(0, 16)}…, ${report.tunnels_revoked} tunnels closed${restart}.` }));
    } catch (error) {
      result.replaceChildren(el("p", { class: "error", text: `Refused, the running config stays: ${error.message}` }));
      button.disabled = false;
    }
  });
  show(
    el("dl", { class: "facts" },
      el("dt", { text: "Version" }), el("dd", { text: data.version }),
      el("dt", { text: "File" }), el("dd", { text: data.path }),
      el("dt", { text: "sha256" }), el("dd", { text: data.sha256 }),
      el("dt", { text: "Loaded at" }), el("dd", { text: time(data.loaded_at) }),
      el("dt", { text: "State backend" }), el("dd", { text: data.state_backend })),
    el("div", { class: "toolbar" }, button,
      el("span", { class: "muted", text: "Reads the file again; an invalid file is refused and the running config stays." })),
    result,
  );
}

const pages = { overview, spend, budgets, denials, sessions, fleet, config };

async function main() {
  const page = pages[document.body.dataset.page];
  if (!page) {
    show(el("p", { text: "No such page." }));
    return;
  }
  try {
    await page();
  } catch (error) {
    if (error.message !== "signed out") show(el("p", { class: "error", text: `Could not load: ${error.message}` }));
  }
  document.body.dataset.ready = "true";
}

main();
