// Vigil's web console: a live alerts table with filters and counts, an alert's page with its
// process tree and events, the fleet's health (Sensors) and the rules with their hits (Rules). Plain DOM, no framework; every value from the API goes in with
// textContent (never innerHTML), and nothing inline, so the console's CSP holds.

import "./style.css";

type Level = "informational" | "low" | "medium" | "high" | "critical";

interface ProcessNode {
  entity_id: string;
  pid: number;
  name: string;
  executable: string;
  command_line: string;
  start: string;
  user: string | null;
  parent_entity_id: string | null;
  seen: boolean;
}

interface RuleInfo {
  id: string;
  title: string;
  level: Level;
  tags: string[];
  description?: string;
}

interface AlertSummary {
  id: number;
  sensor: string;
  received: string;
  "@timestamp": string;
  rule: RuleInfo;
  host: string;
  action: string;
  process: ProcessNode;
}

interface AlertPage {
  alerts: AlertSummary[];
  total: number;
  next_before: number | null;
}

// Events are ECS-shaped JSON; only the fields shown are typed.
interface StoredEvent {
  id: number;
  "@timestamp": string;
  event: { action: string };
  process: { pid: number; entity_id: string; name: string; command_line: string };
  file?: { path: string };
  destination?: { ip?: string; port?: number };
  target?: { pid?: number };
  details?: Record<string, string>;
}

// An alert as stored: the collector's id and receipt around the ECS alert (rule + event).
interface AlertDetail {
  alert: { id: number; sensor: string; received: string; alert: StoredEvent & { rule: RuleInfo; host: { name: string } } };
  ancestry: ProcessNode[];
  tree: ProcessNode[];
  events: StoredEvent[];
  truncated: boolean;
}

interface CountBucket {
  start: string;
  total: number;
}

interface SensorStatus {
  host: string;
  version: string;
  rules_version: string;
  rules: number;
  hooks: string[];
  events_total: number;
  kernel_drops: number;
  delivery_drops: number;
  spool_batches: number;
  spool_bytes: number;
  heartbeat_secs: number;
}

interface SensorInfo {
  sensor: string;
  status: SensorStatus;
  last_seen: string;
  events_per_sec: number;
  silent: boolean;
}

interface RuleHits {
  id: string;
  title: string;
  level: Level | null;
  hits: number;
  last_hit: string;
  last_alert_id: number;
}

interface RulesView {
  central_configured: boolean;
  central: {
    version: number;
    files: { name: string; bytes: number }[];
    rules: { id: string; title: string; level: Level; file: string }[];
    unsupported: string[];
  } | null;
  sensors: { sensor: string; host: string; rules_version: string; rules: number; central_version: number | null; silent: boolean }[];
  hits: RuleHits[];
}

class NotSignedIn extends Error {}

const POLL_MS = 2000;
const PAGE = 50;
const LEVELS: Level[] = ["informational", "low", "medium", "high", "critical"];

let csrfToken = "";
let stopPage: () => void = () => {};

async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await fetch(path, { credentials: "same-origin", ...init });
  if (response.status === 401) throw new NotSignedIn();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? response.statusText);
  return body as T;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function main(): HTMLElement {
  return document.getElementById("main") as HTMLElement;
}

function time(text: string): string {
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? text : d.toLocaleString();
}

function levelBadge(level: Level): HTMLElement {
  return el("span", { class: `level level-${level}` }, level);
}

function notice(title: string, text: string): void {
  main().replaceChildren(el("div", { class: "notice", "data-testid": "notice" }, el("h1", {}, title), el("p", {}, text)));
}

// ---- the alerts table ------------------------------------------------------------------

interface Filters {
  from: string;
  to: string;
  min_severity: string;
  rule: string;
  tag: string;
  host: string;
  q: string;
}

let filters: Filters = { from: "", to: "", min_severity: "", rule: "", tag: "", host: "", q: "" };

function filterQuery(extra: Record<string, string | number> = {}): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) {
    if (v === "") continue;
    params.set(k, k === "from" || k === "to" ? new Date(v).toISOString() : v);
  }
  for (const [k, v] of Object.entries(extra)) params.set(k, String(v));
  return params.toString();
}

function filterForm(onChange: () => void): HTMLFormElement {
  const input = (name: keyof Filters, label: string, type = "text") =>
    el("label", {}, label, el("input", { name, type, value: filters[name], "data-testid": `filter-${name}` }));
  const severity = el("select", { name: "min_severity", "data-testid": "filter-min_severity" }, el("option", { value: "" }, "any"));
  for (const level of LEVELS) {
    const option = el("option", { value: level }, `${level} and above`);
    if (filters.min_severity === level) option.selected = true;
    severity.append(option);
  }
  const form = el(
    "form",
    { class: "filters", "data-testid": "filters" },
    input("from", "From", "datetime-local"),
    input("to", "To", "datetime-local"),
    el("label", {}, "Severity", severity),
    input("rule", "Rule id"),
    input("tag", "Tag"),
    input("host", "Host"),
    input("q", "Text"),
    el("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    filters = Object.fromEntries(Object.keys(filters).map((k) => [k, String(data.get(k) ?? "").trim()])) as unknown as Filters;
    onChange();
  });
  return form;
}

function alertRow(a: AlertSummary): HTMLTableRowElement {
  const row = el(
    "tr",
    { class: "alert-row", "data-alert-id": String(a.id), "data-pid": String(a.process.pid) },
    el("td", {}, time(a.received)),
    el("td", {}, levelBadge(a.rule.level)),
    el("td", {}, a.rule.title),
    el("td", {}, a.host || a.sensor),
    el("td", {}, String(a.process.pid)),
    el("td", { class: "cmd" }, a.process.command_line),
  );
  row.addEventListener("click", () => {
    location.hash = `#/alerts/${a.id}`;
  });
  return row;
}

function chart(buckets: CountBucket[]): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 720;
  const height = 80;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("data-testid", "counts");
  const max = Math.max(1, ...buckets.map((b) => b.total));
  const slot = width / 24;
  // The last 24 hours, one bar per hour, oldest on the left.
  const now = Date.now();
  for (const b of buckets) {
    const hoursAgo = Math.floor((now - new Date(b.start).getTime()) / 3_600_000);
    const x = (23 - Math.min(23, Math.max(0, hoursAgo))) * slot;
    const h = Math.max(2, (b.total / max) * (height - 4));
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(x + 2));
    rect.setAttribute("y", String(height - h));
    rect.setAttribute("width", String(slot - 4));
    rect.setAttribute("height", String(h));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${time(b.start)}: ${b.total}`;
    rect.append(title);
    svg.append(rect);
  }
  return svg;
}

async function alertsPage(): Promise<void> {
  const tbody = el("tbody", { "data-testid": "alert-rows" });
  const total = el("span", { "data-testid": "total" }, "…");
  const older = el("button", { type: "button", "data-testid": "older" }, "Older");
  const chartBox = el("div");
  let newest = 0;
  let nextBefore: number | null = null;
  let timer = 0;
  let generation = 0;

  const reload = async () => {
    const mine = ++generation;
    const [page, counts] = await Promise.all([
      api<AlertPage>(`/api/alerts?${filterQuery({ limit: PAGE })}`),
      api<{ buckets: CountBucket[] }>(`/api/counts?${filterQuery({ bucket_secs: 3600 })}`),
    ]);
    if (mine !== generation) return;
    tbody.replaceChildren(...page.alerts.map(alertRow));
    newest = page.alerts.length ? page.alerts[0].id : Math.max(newest, 0);
    nextBefore = page.next_before;
    older.hidden = nextBefore === null;
    total.textContent = String(page.total);
    chartBox.replaceChildren(chart(counts.buckets));
  };

  // New alerts appear at the top without a reload: poll for ids above the newest shown.
  const poll = async () => {
    const mine = generation;
    try {
      const page = await api<AlertPage>(`/api/alerts?${filterQuery({ after: newest, limit: 500 })}`);
      if (mine !== generation) return;
      for (const a of page.alerts) {
        const row = alertRow(a);
        row.classList.add("fresh");
        tbody.prepend(row);
        newest = Math.max(newest, a.id);
      }
      total.textContent = String(page.total);
      if (page.alerts.length) {
        const counts = await api<{ buckets: CountBucket[] }>(`/api/counts?${filterQuery({ bucket_secs: 3600 })}`);
        if (mine === generation) chartBox.replaceChildren(chart(counts.buckets));
      }
    } catch (e) {
      if (e instanceof NotSignedIn) return signedOutNotice();
    }
    timer = window.setTimeout(poll, POLL_MS);
  };

  older.addEventListener("click", async () => {
    if (nextBefore === null) return;
    const page = await api<AlertPage>(`/api/alerts?${filterQuery({ before: nextBefore, limit: PAGE })}`);
    tbody.append(...page.alerts.map(alertRow));
    nextBefore = page.next_before;
    older.hidden = nextBefore === null;
  });

  main().replaceChildren(
    el("h1", {}, "Alerts ", el("span", { class: "muted" }, "("), total, el("span", { class: "muted" }, ")")),
    filterForm(() => void reload().catch(showError)),
    chartBox,
    el(
      "table",
      { "data-testid": "alerts" },
      el("thead", {}, el("tr", {}, ...["Received", "Level", "Rule", "Host", "PID", "Command line"].map((h) => el("th", {}, h)))),
      tbody,
    ),
    el("div", { class: "pager" }, older),
  );
  await reload();
  timer = window.setTimeout(poll, POLL_MS);
  stopPage = () => {
    generation++;
    window.clearTimeout(timer);
  };
}

// ---- one alert -------------------------------------------------------------------------

function nodeBox(n: ProcessNode, alerted: boolean): HTMLElement {
  const cls = ["node", alerted ? "alerted" : "", n.seen ? "" : "unseen"].filter(Boolean).join(" ");
  return el(
    "span",
    { class: cls, "data-pid": String(n.pid), "data-entity-id": n.entity_id },
    el("strong", {}, n.name || "?"),
    ` pid ${n.pid}`,
    n.user ? ` · ${n.user}` : "",
    " · ",
    el("span", { class: "cmd" }, n.command_line || n.executable),
  );
}

/// Ancestors from the oldest down to the alert's process, then its descendants, nested.
function processTree(detail: AlertDetail): HTMLElement {
  const children = new Map<string, ProcessNode[]>();
  for (const n of detail.tree.slice(1)) {
    const key = n.parent_entity_id ?? "";
    children.set(key, [...(children.get(key) ?? []), n]);
  }
  const descendants = (n: ProcessNode): HTMLElement => {
    const kids = children.get(n.entity_id) ?? [];
    const li = el("li", {}, nodeBox(n, false));
    if (kids.length) li.append(el("ul", { class: "tree" }, ...kids.map(descendants)));
    return li;
  };
  const alerted = detail.tree[0] ?? detail.ancestry[0];
  const alertKids = children.get(alerted.entity_id) ?? [];
  let inner: HTMLElement = el("li", {}, nodeBox(alerted, true));
  if (alertKids.length) inner.append(el("ul", { class: "tree" }, ...alertKids.map(descendants)));
  for (const ancestor of detail.ancestry.slice(1)) {
    inner = el("li", {}, nodeBox(ancestor, false), el("ul", { class: "tree" }, inner));
  }
  return el("ul", { class: "tree root", "data-testid": "process-tree" }, inner);
}

function eventDetail(e: StoredEvent): string {
  if (e.file?.path) return e.file.path;
  if (e.destination?.ip) return `${e.destination.ip}:${e.destination.port ?? ""}`;
  if (e.target?.pid) return `target pid ${e.target.pid}`;
  if (e.details) return Object.entries(e.details).map(([k, v]) => `${k}=${v}`).join(" ");
  return e.process.command_line;
}

async function alertPage(id: string): Promise<void> {
  notice("Loading…", `Alert ${id}: its process tree and events.`);
  const detail = await api<AlertDetail>(`/api/alerts/${encodeURIComponent(id)}`);
  const stored = detail.alert;
  const a = stored.alert;
  const facts = el("dl", { class: "facts" });
  const fact = (k: string, v: string | Node) => facts.append(el("dt", {}, k), el("dd", {}, v));
  fact("Level", levelBadge(a.rule.level));
  fact("Rule id", a.rule.id);
  fact("Tags", a.rule.tags.join(", ") || "—");
  if (a.rule.description) fact("Description", a.rule.description);
  fact("Host", `${a.host.name} (sensor ${stored.sensor})`);
  fact("Event time", time(a["@timestamp"]));
  fact("Received", time(stored.received));
  fact("Action", a.event.action);
  fact("Command line", el("span", { class: "cmd" }, a.process.command_line));
  const events = el(
    "tbody",
    { "data-testid": "event-rows" },
    ...detail.events.map((e) =>
      el(
        "tr",
        { "data-event-pid": String(e.process.pid), "data-action": e.event.action },
        el("td", {}, time(e["@timestamp"])),
        el("td", {}, e.event.action),
        el("td", {}, String(e.process.pid)),
        el("td", {}, e.process.name),
        el("td", { class: "cmd" }, eventDetail(e)),
      ),
    ),
  );
  main().replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← Alerts")),
    el("h1", { "data-testid": "alert-title" }, a.rule.title),
    facts,
    el("h2", {}, "Process tree"),
    processTree(detail),
    el("h2", {}, "Events of this process and its children", detail.truncated ? " (cut)" : ""),
    el(
      "table",
      { "data-testid": "events" },
      el("thead", {}, el("tr", {}, ...["Time", "Action", "PID", "Process", "Detail"].map((h) => el("th", {}, h)))),
      events,
    ),
  );
}

// ---- sensors -----------------------------------------------------------------------------

const FLEET_POLL_MS = 5000;

function ago(now: string, then: string): string {
  const secs = Math.max(0, Math.round((new Date(now).getTime() - new Date(then).getTime()) / 1000));
  if (secs < 120) return `${secs} s ago`;
  if (secs < 7200) return `${Math.round(secs / 60)} min ago`;
  return `${Math.round(secs / 3600)} h ago`;
}

function table(testid: string, headings: string[], rows: HTMLElement[]): HTMLTableElement {
  return el(
    "table",
    { "data-testid": testid },
    el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))),
    el("tbody", { "data-testid": `${testid}-rows` }, ...rows),
  );
}

function sensorRow(now: string, s: SensorInfo): HTMLTableRowElement {
  const st = s.status;
  const drops = st.kernel_drops + st.delivery_drops > 0;
  const cls = ["sensor-row", s.silent ? "silent" : "", drops ? "drops" : ""].filter(Boolean).join(" ");
  const count = (n: number) => el("td", { class: n > 0 ? "num bad" : "num" }, String(n));
  return el(
    "tr",
    { class: cls, "data-sensor": s.sensor },
    el("td", {}, el("strong", {}, s.sensor)),
    el("td", {}, st.host),
    el("td", {}, st.version),
    el("td", {}, `${st.rules} (${st.rules_version})`),
    el("td", { "data-testid": "last-seen" }, ago(now, s.last_seen)),
    el("td", { class: "num" }, s.events_per_sec.toFixed(1)),
    count(st.kernel_drops),
    count(st.delivery_drops),
    el("td", { class: "num" }, String(st.spool_batches)),
    el("td", { "data-testid": "state" }, el("span", { class: s.silent ? "state state-silent" : "state state-ok" }, s.silent ? "SILENT" : "ok")),
    el("td", { class: "cmd" }, st.hooks.join(", ")),
  );
}

async function sensorsPage(): Promise<void> {
  const summary = el("p", { "data-testid": "fleet-summary" });
  const box = el("div");
  let timer = 0;
  let live = true;
  const refresh = async () => {
    const view = await api<{ now: string; sensors: SensorInfo[] }>("/api/sensors");
    if (!live) return;
    const silent = view.sensors.filter((s) => s.silent).length;
    const dropping = view.sensors.filter((s) => s.status.kernel_drops + s.status.delivery_drops > 0).length;
    summary.textContent = `${view.sensors.length} sensors · ${silent} silent · ${dropping} reporting drops`;
    box.replaceChildren(
      view.sensors.length
        ? table(
            "sensors",
            ["Sensor", "Host", "Version", "Rules", "Last heartbeat", "Events/s", "Kernel drops", "Delivery drops", "Spool", "State", "Hooks"],
            view.sensors.map((s) => sensorRow(view.now, s)),
          )
        : el("p", { class: "muted" }, "No sensor has sent a heartbeat yet."),
    );
  };
  main().replaceChildren(el("h1", {}, "Sensors"), summary, box);
  await refresh();
  const poll = async () => {
    try {
      await refresh();
    } catch (e) {
      if (e instanceof NotSignedIn) return signedOutNotice();
    }
    if (live) timer = window.setTimeout(poll, FLEET_POLL_MS);
  };
  timer = window.setTimeout(poll, FLEET_POLL_MS);
  stopPage = () => {
    live = false;
    window.clearTimeout(timer);
  };
}

// ---- rules -------------------------------------------------------------------------------

async function rulesPage(): Promise<void> {
  const view = await api<RulesView>("/api/rules");
  const hitsById = new Map(view.hits.map((h) => [h.id, h]));
  const parts: HTMLElement[] = [el("h1", {}, "Rules")];

  parts.push(el("h2", {}, "Central rule set"));
  if (!view.central_configured) {
    parts.push(el("p", { class: "muted", "data-testid": "central" }, "This collector serves no central rules (no `rules:` section in collector.yaml)."));
  } else if (!view.central) {
    parts.push(el("p", { class: "muted", "data-testid": "central" }, "None pushed yet: `vigil rules push DIR`."));
  } else {
    const c = view.central;
    parts.push(
      el(
        "p",
        { "data-testid": "central" },
        `Version ${c.version}: ${c.rules.length} rules in `,
        c.files.map((f) => `${f.name} (${f.bytes} bytes)`).join(", "),
      ),
      table(
        "central-rules",
        ["Rule id", "Title", "Level", "File", "Hits"],
        c.rules.map((r) =>
          el(
            "tr",
            { "data-rule-id": r.id },
            el("td", { class: "cmd" }, r.id),
            el("td", {}, r.title),
            el("td", {}, levelBadge(r.level)),
            el("td", {}, r.file),
            el("td", { class: "num" }, String(hitsById.get(r.id)?.hits ?? 0)),
          ),
        ),
      ),
    );
    for (const u of c.unsupported) parts.push(el("p", { class: "muted" }, `Skipped: ${u}`));
  }

  parts.push(el("h2", {}, "What each sensor runs"));
  parts.push(
    table(
      "sensor-rules",
      ["Sensor", "Host", "Rules", "Local rules digest", "Central version"],
      view.sensors.map((s) =>
        el(
          "tr",
          { "data-sensor": s.sensor, class: s.silent ? "silent" : "" },
          el("td", {}, s.sensor),
          el("td", {}, s.host),
          el("td", { class: "num" }, String(s.rules)),
          el("td", { class: "cmd" }, s.rules_version),
          el("td", {}, s.central_version === null ? "—" : String(s.central_version)),
        ),
      ),
    ),
  );

  parts.push(el("h2", {}, "Hits per rule (stored alerts)"));
  parts.push(
    table(
      "hits",
      ["Rule id", "Title", "Level", "Hits", "Last hit"],
      view.hits.map((h) => {
        const row = el(
          "tr",
          { class: "hit-row", "data-rule-id": h.id },
          el("td", { class: "cmd" }, h.id),
          el("td", {}, h.title),
          el("td", {}, h.level ? levelBadge(h.level) : "?"),
          el("td", { class: "num", "data-testid": "hit-count" }, String(h.hits)),
          el("td", {}, time(h.last_hit)),
        );
        // A rule's row opens the alerts table filtered to it.
        row.addEventListener("click", () => {
          filters = { ...filters, rule: h.id };
          location.hash = "#/";
        });
        return row;
      }),
    ),
  );
  main().replaceChildren(...parts);
}

// ---- session and routing ---------------------------------------------------------------

function signedOutNotice(): void {
  stopPage();
  (document.getElementById("sign-out") as HTMLButtonElement).hidden = true;
  document.getElementById("operator")!.textContent = "";
  notice("Not signed in", "Run `vigil console login` on a machine with your operator certificate and open the link it prints.");
}

function showError(e: unknown): void {
  if (e instanceof NotSignedIn) return signedOutNotice();
  notice("Something went wrong", e instanceof Error ? e.message : String(e));
}

async function route(): Promise<void> {
  stopPage();
  stopPage = () => {};
  const match = /^#\/alerts\/(\d+)$/.exec(location.hash);
  for (const link of document.querySelectorAll("nav a")) {
    const page = link.getAttribute("href") ?? "";
    link.classList.toggle("current", page === "#/" ? !/^#\/(sensors|rules)$/.test(location.hash) : location.hash === page);
  }
  try {
    if (match) await alertPage(match[1]);
    else if (location.hash === "#/sensors") await sensorsPage();
    else if (location.hash === "#/rules") await rulesPage();
    else await alertsPage();
  } catch (e) {
    showError(e);
  }
}

async function start(): Promise<void> {
  const signOut = document.getElementById("sign-out") as HTMLButtonElement;
  signOut.addEventListener("click", async () => {
    try {
      await api("/api/logout", { method: "POST", headers: { "x-csrf-token": csrfToken } });
    } catch (e) {
      if (!(e instanceof NotSignedIn)) return showError(e);
    }
    signedOutNotice();
    notice("Signed out", "Your session has ended. Run `vigil console login` to sign in again.");
  });
  try {
    const session = await api<{ operator: string; csrf_token: string }>("/api/session");
    csrfToken = session.csrf_token;
    document.getElementById("operator")!.textContent = `signed in as ${session.operator}`;
    signOut.hidden = false;
  } catch (e) {
    return showError(e);
  }
  window.addEventListener("hashchange", () => void route());
  await route();
}

void start();
