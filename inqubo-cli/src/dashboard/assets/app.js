// The Inqubo dashboard: renders the monitor's JSON API (/api) into the page and re-renders when
// /api/events says something changed. Every value from the API goes into the page as text
// (textContent, SVG text nodes), never as HTML: step inputs and outputs cannot inject markup.
"use strict";

const TOKEN_KEY = "inqubo-token";
const SVG = "http://www.w3.org/2000/svg";
const MAX_JSON_CHARS = 20000;

// --- small helpers ---------------------------------------------------------------------------

// el("a", {href: "/x"}, "text", child): an element; strings become text nodes.
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function token() {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) {
    localStorage.setItem(TOKEN_KEY, fragment);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(TOKEN_KEY) || "";
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("/api" + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401) throw new Unauthorized();
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function took(start, end) {
  if (!start || !end) return "";
  const ms = end - start;
  return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
}

function status(value) {
  return el("span", { class: "status " + value, "data-status": value }, value);
}

function prettyJson(value) {
  let text = JSON.stringify(value, null, 2);
  if (text === undefined) text = "";
  if (text.length > MAX_JSON_CHARS) {
    text = text.slice(0, MAX_JSON_CHARS) + `\n… (${text.length - MAX_JSON_CHARS} more characters)`;
  }
  return el("pre", {}, text);
}

// Replaces `parent`'s children; arrays are flattened, null and undefined skipped.
function fill(parent, ...children) {
  parent.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

function notice(text, isError) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

// --- the workflow graph ----------------------------------------------------------------------

// Draws a definition's steps in columns by depth (longest path from a first step), with each
// step coloured by `states[step]` (pending when absent). A map is one node, labelled with its
// counts from `maps` (elements done of all, failed) when given.
function graph(definition, states, maps) {
  const steps = definition ? definition.steps : [];
  const depth = {};
  for (const step of steps) {
    depth[step.name] = step.parents.length ? 1 + Math.max(...step.parents.map((p) => depth[p] || 0)) : 0;
  }
  const columns = [];
  for (const step of steps) (columns[depth[step.name]] ||= []).push(step.name);
  const width = 160, height = 34, gapX = 60, gapY = 16, pad = 12;
  const position = {};
  columns.forEach((names, column) =>
    names.forEach((name, row) => {
      position[name] = { x: pad + column * (width + gapX), y: pad + row * (height + gapY) };
    }),
  );
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const picture = svg("svg", {
    class: "graph",
    width: pad * 2 + columns.length * (width + gapX) - gapX,
    height: pad * 2 + rows * (height + gapY) - gapY,
    role: "img",
    "aria-label": "workflow graph",
  });
  for (const edge of definition ? definition.edges : []) {
    const from = position[edge.from], to = position[edge.to];
    if (!from || !to) continue;
    const x1 = from.x + width, y1 = from.y + height / 2, x2 = to.x, y2 = to.y + height / 2;
    const bend = (x2 - x1) / 2;
    picture.append(svg("path", { d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}` }));
  }
  for (const step of steps) {
    const { x, y } = position[step.name];
    const state = (states && states[step.name]) || "pending";
    const group = svg("g", { "data-step": step.name, "data-state": state });
    const counts = maps && maps.find((m) => m.step === step.name);
    const label = step.map
      ? `${step.name} (map)${counts ? ` ${counts.succeeded}/${counts.elements}${counts.failed ? ` ✗${counts.failed}` : ""}` : ""}`
      : step.name;
    group.append(svg("rect", { x, y, width, height, rx: 6, class: "fill-" + state }));
    group.append(svg("text", { x: x + 10, y: y + height / 2 + 4 }, label));
    group.append(svg("title", {}, counts
      ? `${step.name}: map of ${counts.elements} elements, ${counts.succeeded} succeeded, ${counts.running} running, ${counts.failed} failed, ${counts.skipped} skipped`
      : `${step.name}: ${state}`));
    picture.append(group);
  }
  return picture;
}

// --- pages -----------------------------------------------------------------------------------

async function runsPage(main) {
  const query = new URLSearchParams(location.search);
  const page = Number(query.get("page") || 1);
  const [data, workflows] = await Promise.all([
    api("/runs?" + query.toString()),
    api("/workflows"),
  ]);
  const go = (changes) => {
    const next = new URLSearchParams(location.search);
    for (const [key, value] of Object.entries(changes)) value ? next.set(key, value) : next.delete(key);
    if (!("page" in changes)) next.delete("page");
    navigate("/?" + next.toString());
  };
  const workflowSelect = el("select", { name: "workflow", onchange: (e) => go({ workflow: e.target.value }) },
    el("option", { value: "" }, "every workflow"),
    workflows.workflows.map((w) =>
      el("option", { value: w.workflow, selected: w.workflow === query.get("workflow") }, w.workflow)),
  );
  const search = el("input", { type: "search", name: "q", placeholder: "run id", value: query.get("q") || "" });
  const counts = el("div", { class: "counts" },
    el("a", { href: "#", class: query.get("status") ? "" : "current", onclick: (e) => { e.preventDefault(); go({ status: "" }); } },
      `all ${data.total}`),
    ["running", "retrying", "succeeded", "failed", "cancelled"].map((name) => [name, data.counts[name] ?? 0]).map(([name, count]) =>
      el("a", { href: "#", "data-count": name, class: query.get("status") === name ? "current" : "",
                onclick: (e) => { e.preventDefault(); go({ status: name }); } },
        status(name), " ", String(count))),
  );
  const rows = data.runs.map((run) =>
    el("tr", { "data-run": run.run_id },
      el("td", { class: "mono" }, el("a", { href: "/runs/" + encodeURIComponent(run.run_id) }, run.run_id)),
      el("td", {}, run.workflow),
      el("td", {}, status(run.status)),
      el("td", {}, when(run.created_ms)),
      el("td", {}, took(run.created_ms, run.finished_ms)),
    ));
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  fill(main, 
    el("h1", {}, "Runs"),
    el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); go({ q: search.value.trim() }); } },
      workflowSelect, search, el("button", { type: "submit" }, "Search")),
    el("div", { class: "summary" }, counts,
      durationHistogram(data.runs.filter((r) => r.finished_ms).map((r) => r.finished_ms - r.created_ms))),
    rows.length
      ? el("table", {}, el("thead", {}, el("tr", {}, ["Run", "Workflow", "Status", "Started", "Took"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows))
      : el("p", { class: "muted" }, "No run matches. Runs appear here once `inqubo monitor` has seen them."),
    el("div", { class: "pager" },
      el("button", { disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, "← Newer"),
      el("span", {}, `page ${page} of ${pages}`),
      el("button", { disabled: page >= pages, onclick: () => go({ page: String(page + 1) }) }, "Older →")),
  );
}

// The state of each step in a run: that of its latest attempt; for a map, failed if an
// element failed, succeeded once every element did, running (started) otherwise.
function stepStates(run) {
  const states = {};
  for (const attempt of run.attempts) states[attempt.step] = attempt.status;
  for (const map of run.maps || []) {
    states[map.step] = map.failed ? "failed"
      : map.succeeded === map.elements ? "succeeded"
      : map.skipped && !map.running ? "skipped"
      : "started";
  }
  return states;
}

// One row per map step of a run: its elements by state.
function mapTable(run) {
  if (!run.maps || !run.maps.length) return null;
  return [
    el("h2", {}, "Maps"),
    el("table", { id: "maps" },
      el("thead", {}, el("tr", {}, ["Step", "Elements", "Succeeded", "Running", "Failed", "Skipped"].map((h) => el("th", {}, h)))),
      el("tbody", {}, run.maps.map((map) =>
        el("tr", { "data-map": map.step },
          el("td", { class: "mono" }, map.step),
          ["elements", "succeeded", "running", "failed", "skipped"].map((k) => el("td", { "data-count": k }, String(map[k]))))))),
  ];
}

function timeline(run) {
  const start = run.created_ms;
  const end = Math.max(run.finished_ms || 0, ...run.attempts.map((a) => a.finished_ms || a.started_ms), start + 1);
  const span = end - start;
  return el("div", { class: "timeline" },
    run.attempts.map((attempt) => {
      const bar = el("span", { class: "bar " + attempt.status, title: `${attempt.status} ${took(attempt.started_ms, attempt.finished_ms)}` });
      bar.style.left = (100 * (attempt.started_ms - start) / span) + "%";
      bar.style.width = (100 * ((attempt.finished_ms || end) - attempt.started_ms) / span) + "%";
      return el("div", { class: "row" },
        el("span", { class: "label mono" }, `${attempt.step} #${attempt.attempt}`),
        el("span", { class: "lane" }, bar));
    }));
}

// Posts a request about a run (cancel, resume), says how it went, and redraws.
async function runAction(run, what, body, done) {
  try {
    notice(done(await api(`/runs/${encodeURIComponent(run.run_id)}/${what}`, { method: "POST", body })));
  } catch (error) {
    notice(error.message, true);
  }
  refresh();
}

// Cancel for a run still going, resume for a failed one.
function runActions(run) {
  const buttons = [];
  if ((run.status === "running" || run.status === "retrying") && !run.finished_ms) {
    buttons.push(el("button", { class: "danger", "data-cancel": true, onclick: () => {
      if (confirm(`Cancel run ${run.run_id} of ${run.workflow}? Its steps not started yet will not start.`)) {
        runAction(run, "cancel", { workflow: run.workflow, reason: "cancelled from the dashboard" },
          (r) => `run ${r.run_id} cancelled`);
      }
    } }, "Cancel run"));
  }
  if (run.status === "failed") {
    buttons.push(el("button", { "data-resume": true, onclick: () =>
      runAction(run, "resume", { workflow: run.workflow },
        (r) => `run ${r.run_id} resumed as generation ${r.generation}: ${r.inputs} input(s) sent back to their steps`) },
      "Resume"));
  }
  return buttons.length ? el("div", { class: "filters", id: "run-actions" }, buttons) : null;
}

async function runPage(main, runId) {
  const run = await api("/runs/" + encodeURIComponent(runId));
  fill(main, 
    el("h1", {}, "Run ", el("span", { class: "mono" }, run.run_id), " ", el("span", { id: "run-status" }, status(run.status))),
    el("p", { class: "muted" },
      `workflow ${run.workflow} · started ${when(run.created_ms)}`,
      run.finished_ms ? ` · took ${took(run.created_ms, run.finished_ms)}` : ""),
    runActions(run),
    graph(run.definition, stepStates(run), run.maps),
    mapTable(run),
    el("h2", {}, "Attempts"),
    el("table", { id: "attempts" },
      el("thead", {}, el("tr", {}, ["Step", "Attempt", "Status", "Took", "Error / input and output"].map((h) => el("th", {}, h)))),
      el("tbody", {}, run.attempts.map((attempt) =>
        el("tr", { "data-attempt": `${attempt.step}#${attempt.attempt}` },
          el("td", { class: "mono" }, attempt.step),
          el("td", {}, String(attempt.attempt)),
          el("td", {}, status(attempt.status)),
          el("td", {}, took(attempt.started_ms, attempt.finished_ms)),
          el("td", {},
            attempt.error ? el("pre", { class: "error-text" }, attempt.error) : null,
            el("details", {}, el("summary", {}, "input"), prettyJson(attempt.input)),
            attempt.output !== null ? el("details", {}, el("summary", {}, "output"), prettyJson(attempt.output)) : null),
        )))),
    el("h2", {}, "Timeline"),
    timeline(run),
    el("h2", {}, "Run input"),
    prettyJson(run.input),
    run.outcome !== null ? [el("h2", {}, "Outcome"), prettyJson(run.outcome)] : null,
  );
}

function perMinute(count, windowMs) {
  const rate = count / (windowMs / 60000);
  return (rate < 10 ? rate.toFixed(2) : rate.toFixed(0)) + " /min";
}

// --- charts (uPlot, bundled: /assets/uplot.js) -------------------------------------------------

const PALETTE = ["#0969da", "#1a7f37", "#cf222e", "#bf8700", "#8250df", "#1b7c83", "#bc4c00", "#57606a"];

// A time-series chart: `times` in ms, each series {label, values, color}; a null value is a gap.
function timeChart(name, title, unit, times, series) {
  const box = el("div", { class: "chart", "data-chart": name });
  if (typeof uPlot === "undefined") return fill(box, el("p", { class: "muted" }, title + ": charts unavailable"));
  const options = {
    title, width: 360, height: 190,
    scales: { x: { time: true } },
    axes: [{}, { label: unit, size: 55 }],
    // Points as well as lines: a minute with runs between quiet ones is a lone point.
    series: [{}, ...series.map((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      return { label: s.label, stroke: color, width: 1.5, points: { show: true, size: 5, fill: color } };
    })],
    legend: { live: false },
  };
  new uPlot(options, [times.map((t) => t / 1000), ...series.map((s) => s.values)], box);
  return box;
}

// Runs started and finished per minute, the failure rate, and step durations, from the history.
async function workflowCharts(workflow, windowName) {
  const stats = await api(`/workflows/${encodeURIComponent(workflow)}/stats?window=${windowName}`);
  const perMinuteOf = (counts) => counts.map((n) => n / (stats.bucket_ms / 60000));
  const rate = stats.failed.map((n, i) => (stats.finished[i] ? (100 * n) / stats.finished[i] : null));
  const times = stats.bucket_starts_ms;
  const percent = stats.failure_rate === null ? "–" : (100 * stats.failure_rate).toFixed(1) + " %";
  return [
    el("div", { class: "charts" },
      timeChart("runs", "Runs per minute", "runs/min", times, [
        { label: "started", values: perMinuteOf(stats.started), color: PALETTE[0] },
        { label: "finished", values: perMinuteOf(stats.finished), color: PALETTE[1] },
      ]),
      timeChart("failures", `Failed runs (${percent})`, "% of finished", times, [
        { label: "failed", values: rate, color: PALETTE[2] },
      ]),
      timeChart("durations", "Step duration, median", "ms", times,
        stats.steps.map((step) => ({ label: step.step, values: step.p50_ms_per_bucket })))),
    el("table", { class: "percentiles" },
      el("thead", {}, el("tr", {}, ["Step", "Attempts", "p50", "p90", "p99"].map((h) => el("th", {}, h)))),
      el("tbody", {}, stats.steps.map((step) =>
        el("tr", {},
          el("td", { class: "mono" }, step.step), el("td", {}, step.count),
          [step.p50_ms, step.p90_ms, step.p99_ms].map((ms) => el("td", {}, ms === null ? "–" : ms + " ms")))))),
  ];
}

// The last hour or day of a workflow, switchable; the window is kept in the URL (?window=1d).
function chartPanel(workflow) {
  const windowName = new URLSearchParams(location.search).get("window") === "1d" ? "1d" : "1h";
  const panel = el("div", { class: "chart-panel", "data-charts": workflow }, el("p", { class: "muted" }, "Loading charts…"));
  const choose = (name) => (e) => { e.preventDefault(); navigate("/workflows?window=" + name); };
  const header = el("div", { class: "counts" },
    el("a", { href: "#", class: windowName === "1h" ? "current" : "", onclick: choose("1h") }, "last hour"),
    el("a", { href: "#", class: windowName === "1d" ? "current" : "", onclick: choose("1d") }, "last day"));
  workflowCharts(workflow, windowName)
    .then((parts) => fill(panel, ...parts))
    .catch((error) => fill(panel, el("p", { class: "muted" }, "No charts: " + error.message)));
  return [header, panel];
}

// A small histogram of run durations (ms) as an inline SVG: how long this page's runs took.
function durationHistogram(durations) {
  if (durations.length < 2) return null;
  const bins = 12, width = 180, height = 32;
  const low = Math.min(...durations), high = Math.max(...durations);
  const span = Math.max(1, high - low);
  const counts = new Array(bins).fill(0);
  for (const d of durations) counts[Math.min(bins - 1, Math.floor(((d - low) / span) * bins))] += 1;
  const top = Math.max(...counts);
  const chart = svg("svg", { class: "histogram", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `run durations from ${low} ms to ${high} ms` });
  counts.forEach((count, i) => {
    const h = count ? Math.max(2, (count / top) * (height - 2)) : 0;
    chart.append(svg("rect", { x: i * (width / bins) + 1, y: height - h, width: width / bins - 2, height: h }));
  });
  chart.append(svg("title", {}, `durations of the ${durations.length} finished runs shown: ${low}–${high} ms`));
  return el("span", { class: "histogram-box", "data-histogram": durations.length }, chart, " ", el("span", { class: "muted" }, `${low}–${high} ms`));
}

async function workflowsPage(main) {
  const data = await api("/workflows");
  const percent = (rate) => (rate === null ? "–" : (100 * rate).toFixed(1) + " %");
  fill(main, 
    el("h1", {}, "Workflows"),
    data.workflows.length ? null : el("p", { class: "muted" }, "No workflow seen yet: start a runner."),
    data.workflows.map((workflow) =>
      el("section", { class: "card", "data-workflow": workflow.workflow },
        el("h2", {}, workflow.workflow, " ",
          el("a", { href: "/parked?workflow=" + encodeURIComponent(workflow.workflow), class: "muted" },
            `${workflow.parked ?? 0} parked`)),
        graph(workflow.definition, {}),
        chartPanel(workflow.workflow),
        el("table", {},
          el("thead", {}, el("tr", {}, ["Step", "Queue depth", "Consumers", "Attempts (1 h)", "Succeeded", "Retried", "Failed", "Throughput", "Failure rate"].map((h) => el("th", {}, h)))),
          el("tbody", {}, workflow.steps.map((step) =>
            el("tr", {},
              el("td", { class: "mono" }, step.step),
              el("td", {}, step.depth ?? "–"),
              el("td", {}, step.consumers ?? "–"),
              el("td", {}, step.attempts), el("td", {}, step.succeeded),
              el("td", {}, step.retried), el("td", {}, step.failed),
              el("td", {}, perMinute(step.succeeded, data.window_ms)),
              el("td", {}, percent(step.failure_rate)))))))),
  );
}

// Every workflow's schedules: where each comes from, its next fire times and its last runs.
async function schedulesPage(main) {
  const data = await api("/schedules");
  const sections = data.workflows.map((workflow) =>
    el("section", { "data-schedules": workflow.workflow },
      el("h2", {}, workflow.workflow),
      workflow.schedules.length
        ? el("table", {},
            el("thead", {}, el("tr", {}, ["Schedule", "Source", "Pattern", "Time zone", "Next", "Last runs"].map((h) => el("th", {}, h)))),
            el("tbody", {}, workflow.schedules.map((schedule) =>
              el("tr", { "data-schedule": schedule.name },
                el("td", { class: "mono" }, schedule.name),
                el("td", {}, schedule.source),
                el("td", { class: "mono" }, schedule.pattern),
                el("td", {}, schedule.time_zone),
                el("td", { class: "mono", "data-next": schedule.next.length }, schedule.next.map((t) => el("div", {}, t))),
                el("td", { "data-last-runs": schedule.last_runs.length },
                  schedule.last_runs.length
                    ? schedule.last_runs.map((run) => el("div", {},
                        el("a", { class: "mono", href: "/runs/" + encodeURIComponent(run.run_id) }, run.run_id), " ", status(run.status)))
                    : el("span", { class: "muted" }, "none yet")),
              )))) 
        : el("p", { class: "muted" }, "No schedule. Add one with `inqubo schedule add`, or give runners one in code."),
    ));
  fill(main,
    el("h1", {}, "Schedules"),
    sections.length ? sections : el("p", { class: "muted" }, "No workflow announced yet."),
  );
}

async function parkedPage(main) {
  const query = new URLSearchParams(location.search);
  const workflows = (await api("/workflows")).workflows.map((w) => w.workflow);
  const workflow = query.get("workflow") || workflows[0];
  const select = el("select", { name: "workflow", onchange: (e) => navigate("/parked?workflow=" + encodeURIComponent(e.target.value)) },
    workflows.map((w) => el("option", { value: w, selected: w === workflow }, w)));
  if (!workflow) {
    fill(main, el("h1", {}, "Parked"), el("p", { class: "muted" }, "No workflow seen yet."));
    return;
  }
  const data = await api(`/workflows/${encodeURIComponent(workflow)}/parked`);
  const path = `/workflows/${encodeURIComponent(workflow)}/parked`;
  const act = async (what, body, done) => {
    try {
      const result = await api(`${path}/${what}`, { method: "POST", body });
      notice(done(result));
    } catch (error) {
      notice(error.message, true);
    }
    refresh();
  };
  fill(main, 
    el("h1", {}, "Parked messages"),
    el("div", { class: "filters" }, select,
      el("button", { "data-replay-all": true, disabled: !data.messages.length, onclick: () => {
        if (confirm(`Replay all ${data.messages.length} parked message(s) of ${workflow}?`)) {
          act("replay", { all: true }, (r) => `replayed ${r.replayed} message(s)`);
        }
      } }, "Replay all"),
      el("button", { class: "danger", "data-purge": true, disabled: !data.messages.length, onclick: () => {
        if (confirm(`Delete all ${data.messages.length} parked message(s) of ${workflow}? This cannot be undone.`)) {
          act("purge", { all: true }, (r) => `purged ${r.purged} message(s)`);
        }
      } }, "Purge all")),
    data.messages.length
      ? el("table", {},
          el("thead", {}, el("tr", {}, ["Run", "Generation", "Step", "Reason", "Error", "Input", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, data.messages.map((message) => {
            // A message is addressed by its message id, else by its run and step.
            const target = message.message_id ? { message_id: message.message_id }
              : message.run_id ? { run_id: message.run_id, step: message.step } : null;
            return el("tr", { "data-parked": message.message_id ?? "", "data-parked-run": message.run_id ?? "",
                               title: message.message_id ? "message id " + message.message_id : null },
              el("td", { class: "mono" }, message.run_id
                ? el("a", { href: "/runs/" + encodeURIComponent(message.run_id) }, message.run_id) : "–"),
              el("td", {}, String(message.generation)),
              el("td", { class: "mono" }, message.step ?? "–"),
              el("td", {}, message.reason ?? "–"),
              el("td", {}, message.error ?? ""),
              el("td", {}, el("code", {}, message.input)),
              el("td", {}, target ? el("button", { "data-replay": message.message_id ?? message.run_id, onclick: () =>
                act("replay", target, (r) => `replayed ${r.replayed} message(s)`) }, "Replay") : null),
            );
          })))
      : el("p", { class: "muted", id: "no-parked" }, `No parked message for ${workflow}.`),
  );
}

// --- routing, refresh and live updates --------------------------------------------------------

let rendering = Promise.resolve();

function currentRun() {
  const match = location.pathname.match(/^\/runs\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function render() {
  const main = document.getElementById("main");
  const section = currentRun() ? "runs" : location.pathname.replace(/^\//, "") || "runs";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === section);
  }
  try {
    if (currentRun()) await runPage(main, currentRun());
    else if (location.pathname === "/workflows") await workflowsPage(main);
    else if (location.pathname === "/parked") await parkedPage(main);
    else if (location.pathname === "/schedules") await schedulesPage(main);
    else await runsPage(main);
    document.body.dataset.ready = "true";
  } catch (error) {
    if (error instanceof Unauthorized) {
      const form = document.getElementById("token-form").content.firstElementChild.cloneNode(true);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        localStorage.setItem(TOKEN_KEY, form.elements.token.value);
        connectLive();
        refresh();
      });
      fill(main, form);
    } else {
      fill(main, el("p", { class: "error-text" }, "Cannot load this page: " + error.message));
    }
  }
}

function refresh() {
  rendering = rendering.then(render);
  return rendering;
}

function navigate(path) {
  history.pushState(null, "", path);
  notice("");
  refresh();
}

// Redraws after events, at most every 300 ms on a run's page and every 2 s on the others
// (which ask RabbitMQ for queue depths), however fast events arrive.
let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, currentRun() ? 300 : 2000);
}

let live = null;
function connectLive() {
  if (live) live.close();
  const indicator = document.getElementById("live");
  live = new EventSource("/api/events" + (token() ? "?token=" + encodeURIComponent(token()) : ""));
  live.onopen = () => { indicator.textContent = "live"; indicator.classList.add("on"); };
  live.onerror = () => { indicator.textContent = "reconnecting"; indicator.classList.remove("on"); };
  live.addEventListener("lifecycle", (message) => {
    const event = JSON.parse(message.data);
    const run = currentRun();
    if (!run || run === event.run_id) refreshSoon();
  });
  live.addEventListener("lagged", refreshSoon);
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", refresh);
// A page left for another keeps its event stream open while the browser caches it for "back",
// and browsers open at most six connections to one server: close the stream on the way out,
// open it again on the way back.
window.addEventListener("pagehide", () => {
  if (live) live.close();
  live = null;
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    connectLive();
    refresh();
  }
});
token();
connectLive();
refresh();
