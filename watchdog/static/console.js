// metrics-watchdog console. Every string from the daemon is untrusted (label values come from
// the monitored systems): it reaches the page only through textContent, createTextNode and
// attributes that are not URLs or handlers — never as markup. URLs are relative, so the console
// also works behind a path-prefixing proxy. Writes send the API token entered once and kept in
// this tab's sessionStorage.
"use strict";

var API = {
  readyz: "readyz",
  status: "api/v1/status",
  rules: "api/v1/rules",
  alerts: "api/v1/alerts",
  amAlerts: "api/v2/alerts",
  silences: "api/v1/silences",
  silence: "api/v1/silences/{id}",
  acks: "api/v1/acks",
  incidents: "api/v1/incidents?limit=500",
  openIncidents: "api/v1/incidents?state=open&limit=500",
  runs: "api/v1/actions/runs?limit=50",
  actions: "api/v1/actions",
  run: "api/v1/actions/{name}/run",
  deploys: "api/v1/deploys?limit=50",
  failed: "api/v1/notifications?status=failed&limit=20",
  queryRange: "api/v1/query_range",
  ruleDetail: "api/v1/rules/detail",
  backtest: "api/v1/backtest",
  pause: "api/v1/pause"
};
var REFRESH_MS = 5000;
var TOKEN_KEY = "watchdog.apiToken";
var S = {};            // the last answer of each API key: {ok, status, data, error}
var view = null;       // the mounted view: {needs, update}
var prefill = {};      // what one view hands the next (silence matchers, backtest rule)

// ---- DOM helpers: text only ---------------------------------------------------------------

function el(tag, cls, text) {
  var n = document.createElement(tag);
  if (cls) { n.className = cls; }
  if (text !== undefined && text !== null) { n.textContent = String(text); }
  return n;
}
function add(parent) {
  for (var i = 1; i < arguments.length; i++) {
    var c = arguments[i];
    if (c === null || c === undefined || c === false || c === "") { continue; }
    if (Array.isArray(c)) { c.forEach(function (x) { add(parent, x); }); continue; }
    parent.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  return parent;
}
function clear(n) { while (n.firstChild) { n.removeChild(n.firstChild); } return n; }
function $(id) { return document.getElementById(id); }
function badge(text, kind) { return el("span", "badge " + (kind || kindOf(text)), text); }
function kindOf(s) {
  s = String(s);
  if (/^(ok|ready|healthy|loaded|up|succeeded|verified|resolved|passed|pass|delivered|inactive|active-ack|expired)$/.test(s)) { return "ok"; }
  if (/^(firing|failed|fail|rejected|down|not_helped|error|err|critical|page|open|not ready)$/.test(s)) { return "bad"; }
  if (/^(pending|running|dry_run|would_run|waiting|watching|warning|retrying|silenced|inhibited|acked|paused|suppressed)$/.test(s)) { return "warn"; }
  return "";
}
function button(text, cls, onclick) {
  var b = el("button", cls || "", text);
  b.type = "button";
  b.addEventListener("click", onclick);
  return b;
}
function input(id, type, placeholder, value) {
  var i = el("input");
  i.id = id; i.type = type || "text";
  if (placeholder) { i.placeholder = placeholder; }
  if (value !== undefined) { i.value = value; }
  return i;
}
function field(label, control, cls) {
  var l = el("label", cls || "", label);
  l.appendChild(control);
  return l;
}
function section(title, id) {
  var s = el("section");
  if (id) { s.id = id; }
  var h = add(el("h2"), title);
  s.appendChild(h);
  return s;
}
function table(headers, rows, cls) {
  if (!rows.length) { return null; }
  var t = el("table", cls === undefined ? "stack" : cls), thead = el("thead"), tr = el("tr"), tb = el("tbody");
  headers.forEach(function (h) { add(tr, el("th", null, h)); });
  add(t, add(thead, tr), tb);
  rows.forEach(function (cells) {
    var r = el("tr");
    if (cells.cls) { r.className = cells.cls; }
    cells.forEach(function (c, i) {
      var td = el("td");
      td.setAttribute("data-label", headers[i]);  // the phone layout's field names (CSS attr())
      if (c && c.actionsCell) { td.className = "actions-cell"; }
      add(td, c);
      add(r, td);
    });
    add(tb, r);
  });
  return t;
}
function chips(labels, skip) {
  var span = el("span");
  Object.keys(labels || {}).sort().forEach(function (k) {
    if (skip && skip.indexOf(k) >= 0) { return; }
    add(span, el("span", "chip", k + "=" + labels[k]));
  });
  return span;
}
// A titled block that starts folded when it is long (a phone would scroll for pages).
function fold(title, count, content) {
  var d = el("details", "fold");
  d.open = count <= 6 || window.innerWidth > 760;
  add(d, el("summary", null, title + " (" + count + ")"), content);
  return d;
}
function empty(text) { return el("p", "empty", text); }

// ---- time and numbers ---------------------------------------------------------------------

function toDate(t) {
  if (t === null || t === undefined || t === "" || String(t).indexOf("0001-01-01") === 0) { return null; }
  var d = typeof t === "number" ? new Date(t * 1000) : new Date(String(t));
  return isNaN(d.getTime()) ? null : d;
}
function pad(n) { return (n < 10 ? "0" : "") + n; }
function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) { return ""; }
  s = Math.max(0, Math.round(s));
  return s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" + pad(s % 60) + "s"
    : s < 86400 ? Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m"
    : Math.floor(s / 86400) + "d" + pad(Math.floor(s % 86400 / 3600)) + "h";
}
function iso(d) { return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z"); }
function when(t) {
  var d = toDate(t);
  if (!d) { return el("span", "muted", "never"); }
  var s = Math.round((Date.now() - d.getTime()) / 1000);
  var span = el("span", null, s < 0 ? "in " + dur(-s) : dur(s) + " ago");
  span.title = iso(d);
  return span;
}
function hhmm(ms) { var d = new Date(ms); return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()); }
function num(v) {
  if (v === null || v === undefined || v === "") { return ""; }
  var n = Number(v);
  return isFinite(n) ? String(Number(n.toPrecision(5))) : String(v);
}
function secs(v) {
  var n = Number(v);
  if (!isFinite(n)) { return ""; }
  return n > 0 && n < 0.0005 ? "<1 ms" : n > 0 && n < 1 ? Math.round(n * 1000) + " ms" : n.toFixed(n < 10 ? 2 : 0) + " s";
}
function labelKey(labels) {
  return JSON.stringify(Object.keys(labels || {}).sort().map(function (k) { return [k, labels[k]]; }));
}

// ---- the API ------------------------------------------------------------------------------

function token() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }
function url(key, params, query) {
  var u = API[key].replace(/\{(\w+)\}/g, function (_, p) { return encodeURIComponent(params[p]); });
  if (query) {
    var q = [];
    Object.keys(query).forEach(function (k) {
      [].concat(query[k]).forEach(function (v) { q.push(encodeURIComponent(k) + "=" + encodeURIComponent(v)); });
    });
    if (q.length) { u += (u.indexOf("?") < 0 ? "?" : "&") + q.join("&"); }
  }
  return u;
}
function call(method, key, opts) {
  opts = opts || {};
  var headers = {"Accept": "application/json"};
  var t = token();
  if (t) { headers.Authorization = "Bearer " + t; }
  var init = {method: method, headers: headers, credentials: "same-origin", cache: "no-store"};
  if (opts.body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(opts.body); }
  return fetch(url(key, opts.params || {}, opts.query), init).then(function (r) {
    return r.text().then(function (text) {
      var body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
      var err = null;
      if (!r.ok) {
        err = body && (typeof body === "string" ? body : body.error) || ("HTTP " + r.status);
        if (r.status === 401 || r.status === 403) { err += " — set the API token (top right)"; }
      }
      var data = body && typeof body === "object" && "data" in body ? body.data : body;
      return {ok: r.ok, status: r.status, data: data, body: body, error: err};
    });
  }, function (e) { return {ok: false, status: 0, data: null, error: "no answer: " + e.message}; });
}
function load(keys) {
  return Promise.all(keys.map(function (k) {
    return call("GET", k).then(function (r) { S[k] = r; return r; });
  }));
}
function problem(key) {
  var r = S[key];
  if (!r) { return empty("loading…"); }
  if (r.ok) { return null; }
  if (r.status === 404) { return empty("not available on this daemon (" + API[key].split("?")[0] + " answered 404: the subsystem is not loaded)"); }
  return el("p", "err", r.error);
}
function data(key, fallback) { return S[key] && S[key].ok && S[key].data != null ? S[key].data : fallback; }

function toast(text, bad) {
  var t = $("toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(function () { t.hidden = true; }, bad ? 9000 : 4000);
}
// A write: the answer as a toast, then everything is read again.
function write(method, key, opts, okText) {
  return call(method, key, opts).then(function (r) {
    if (r.ok) { toast(okText(r)); } else { toast(method + " " + url(key, opts.params || {}) + ": " + r.error, true); }
    refresh();
    return r;
  });
}

// ---- modal --------------------------------------------------------------------------------

// Shows a dialog with `lines` (text or nodes) and returns a Promise of true (OK) or false.
function ask(title, lines, okText, danger) {
  var dlg = $("modal");
  $("modal-title").textContent = title;
  add(clear($("modal-body")), lines.map(function (l) { return typeof l === "string" ? el("p", null, l) : l; }));
  var ok = $("modal-ok");
  ok.textContent = okText || "OK";
  ok.className = danger ? "danger" : "primary";
  return new Promise(function (resolve) {
    function done(v) {
      $("modal-form").onsubmit = null; $("modal-cancel").onclick = null; dlg.oncancel = null;
      if (dlg.open) { dlg.close(); }
      resolve(v);
    }
    $("modal-form").onsubmit = function (e) { e.preventDefault(); done(true); };
    $("modal-cancel").onclick = function () { done(false); };
    dlg.oncancel = function () { done(false); };
    dlg.showModal();
  });
}

// ---- matchers (Alertmanager's syntax, one per line) ------------------------------------------

function parseMatchers(text) {
  var out = [], errors = [];
  text.split(/\n|,(?=\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=))/).forEach(function (line) {
    line = line.trim();
    if (!line) { return; }
    var m = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*)$/.exec(line);
    if (!m) { errors.push("not a matcher: " + line); return; }
    var v = m[3];
    if (/^".*"$/.test(v)) {
      try { v = JSON.parse(v); } catch (e) { errors.push("bad quoting: " + line); return; }
    }
    out.push({name: m[1], value: v, isRegex: m[2].indexOf("~") > 0, isEqual: m[2][0] !== "!", text: line});
  });
  return {matchers: out, errors: errors};
}
function matcherText(m) {
  var op = m.isRegex ? (m.isEqual === false ? "!~" : "=~") : (m.isEqual === false ? "!=" : "=");
  return m.name + op + JSON.stringify(m.value);
}
function labelsAsMatchers(labels) {
  return Object.keys(labels).sort().map(function (k) { return k + "=" + JSON.stringify(labels[k]); }).join("\n");
}
// Live preview: which firing alerts the matchers select, asked of the daemon's own matching
// (GET /api/v2/alerts?filter=...), so the preview and the silence cannot disagree.
function previewer(textarea, box) {
  var seq = 0, timer = null;
  function run() {
    var p = parseMatchers(textarea.value), mine = ++seq;
    clear(box);
    if (p.errors.length) { add(box, el("p", "err", p.errors.join("; "))); return; }
    if (!p.matchers.length) { add(box, empty("enter matchers to see what they select")); return; }
    call("GET", "amAlerts", {query: {filter: p.matchers.map(function (m) { return m.text; })}}).then(function (r) {
      if (mine !== seq) { return; }
      clear(box);
      if (!r.ok) { add(box, el("p", "err", r.error)); return; }
      add(box, el("p", "preview-count", "matches " + r.data.length + " firing alert" + (r.data.length === 1 ? "" : "s") + " now"));
      var ul = el("ul", "preview");
      r.data.slice(0, 50).forEach(function (a) {
        var li = add(el("li"), el("b", null, a.labels.alertname || ""), " ", chips(a.labels, ["alertname"]));
        if (a.status && a.status.silencedBy && a.status.silencedBy.length) { add(li, " ", badge("silenced")); }
        add(ul, li);
      });
      add(box, ul);
    });
  }
  textarea.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 250); });
  run();
  return run;
}

// ---- the chart (SVG drawn here; no library) ----------------------------------------------------

var SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  var n = document.createElementNS(SVG, tag);
  Object.keys(attrs || {}).forEach(function (k) { n.setAttribute(k, attrs[k]); });
  if (text !== undefined) { n.textContent = String(text); }
  return n;
}
function niceTicks(lo, hi, n) {
  var span = hi - lo || Math.abs(hi) || 1, step = Math.pow(10, Math.floor(Math.log10(span / n)));
  [1, 2, 5, 10].some(function (m) { if (span / (step * m) <= n) { step *= m; return true; } return false; });
  var out = [];
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(Number(v.toPrecision(12))); }
  return out;
}
function timeTicks(start, end, n) {
  var choices = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  var step = choices.filter(function (c) { return (end - start) / c <= n; })[0] || 86400;
  var out = [];
  for (var t = Math.ceil(start / step) * step; t <= end; t += step) { out.push(t); }
  return out;
}
// series: [{labels, points: [[t, v]], main}], limits: [{name, op, value}]
function drawChart(box, series, limits, start, end, stepS) {
  var W = Math.max(300, box.clientWidth || 600), H = W < 500 ? 200 : 240;
  var L = 52, R = 10, T = 10, B = 24, vals = [];
  series.forEach(function (s) { s.points.forEach(function (p) { if (isFinite(p[1])) { vals.push(p[1]); } }); });
  (limits || []).forEach(function (l) { vals.push(l.value); });
  var lo = vals.length ? Math.min.apply(null, vals) : 0, hi = vals.length ? Math.max.apply(null, vals) : 1;
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  var padv = (hi - lo) * 0.08; lo -= padv; hi += padv;
  if (lo < 0 && Math.min.apply(null, vals.length ? vals : [0]) >= 0) { lo = 0; }
  function x(t) { return L + (t - start) / (end - start) * (W - L - R); }
  function y(v) { return T + (hi - v) / (hi - lo) * (H - T - B); }
  var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "chart", "class": "chart"});
  niceTicks(lo, hi, 4).forEach(function (v) {
    add(g, svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), "class": "grid"}),
        svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, num(v)));
  });
  timeTicks(start, end, W < 500 ? 4 : 7).forEach(function (t) {
    add(g, svg("line", {x1: x(t), x2: x(t), y1: T, y2: H - B, "class": "grid"}),
        svg("text", {x: x(t), y: H - 8, "text-anchor": "middle"}, hhmm(t * 1000)));
  });
  add(g, svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis"}));
  var gap = (stepS || 60) * 2.5;
  series.slice().sort(function (a, b) { return (a.main ? 1 : 0) - (b.main ? 1 : 0); }).forEach(function (s) {
    var d = "", last = null;
    s.points.forEach(function (p) {
      if (!isFinite(p[1])) { last = null; return; }
      d += (last === null || p[0] - last > gap ? "M" : "L") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1);
      last = p[0];
    });
    if (d) { add(g, svg("path", {d: d, "class": "series" + (s.main ? " main" : "")})); }
  });
  (limits || []).forEach(function (l) {
    add(g, svg("line", {x1: L, x2: W - R, y1: y(l.value), y2: y(l.value), "class": "limit " + l.name}),
        svg("text", {x: W - R - 4, y: y(l.value) - 4, "text-anchor": "end", "class": "limit-label " + l.name}, l.name + " " + l.op + " " + num(l.value)));
  });
  // a readout under the pointer: the main series' value at that time
  var main = series.filter(function (s) { return s.main; })[0] || series[0];
  var cursor = svg("line", {y1: T, y2: H - B, "class": "cursor", visibility: "hidden"});
  var readout = svg("text", {x: L + 4, y: T + 12, "class": "readout"});
  add(g, cursor, readout);
  g.addEventListener("mousemove", function (ev) {
    if (!main || !main.points.length) { return; }
    var r = g.getBoundingClientRect(), px = (ev.clientX - r.left) * W / r.width;
    var t = start + (px - L) / (W - L - R) * (end - start), best = main.points[0];
    main.points.forEach(function (p) { if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) { best = p; } });
    cursor.setAttribute("x1", x(best[0])); cursor.setAttribute("x2", x(best[0]));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = hhmm(best[0] * 1000) + " UTC  " + num(best[1]);
  });
  add(clear(box), g);
  return g;
}
// Charts a rule's expression (without its comparison) over `hours`, highlighting `labels`.
function ruleChart(box, detail, hours, labels) {
  var end = Math.floor(Date.now() / 1000), start = end - hours * 3600;
  var step = Math.max(15, Math.ceil(hours * 3600 / 400));
  add(clear(box), empty("loading the chart…"));
  call("GET", "queryRange", {query: {query: detail.chart.expr, start: start, end: end, step: step}}).then(function (r) {
    if (!r.ok) { add(clear(box), el("p", "err", r.error)); return; }
    var result = r.data.result || [];
    var series = result.map(function (s) {
      var main = !!labels && Object.keys(s.metric).every(function (k) { return k === "__name__" || labels[k] === s.metric[k]; });
      return {labels: s.metric, main: main, points: s.values.map(function (p) { return [p[0], Number(p[1])]; })};
    });
    if (labels && !series.some(function (s) { return s.main; }) && series.length === 1) { series[0].main = true; }
    if (!labels) { series.forEach(function (s) { s.main = series.length === 1; }); }
    var wrap = el("div");
    add(clear(box), wrap);
    if (!series.length) { add(box, empty("no data in the last " + hours + "h for " + detail.chart.expr)); }
    var limits = detail.chart.baseline ? [] : detail.chart.lines;
    drawChart(wrap, series, limits, start, end, step);
    var legend = el("div", "legend");
    series.slice(0, 12).forEach(function (s) {
      add(legend, add(el("span"), el("i", "sw" + (s.main ? " main" : "")), chips(s.labels, ["__name__"])));
    });
    if (series.length > 12) { add(legend, el("span", null, "… and " + (series.length - 12) + " more series")); }
    if (detail.chart.baseline) { add(legend, el("span", "wrn", "this rule compares value/baseline (" + detail.chart.baseline + ") with its threshold; the chart shows the value")); }
    add(box, legend, el("p", "muted small", "expression: " + detail.chart.expr + "  ·  step " + step + "s  ·  times in UTC"));
  });
}

// ---- header: readiness, pause, token ------------------------------------------------------

function renderHeader() {
  var rz = S.readyz, o = $("overall");
  if (rz && rz.body && rz.body.status) {
    o.textContent = rz.body.status;
    o.className = "badge " + (rz.body.status === "ready" ? "ok" : "bad");
    o.title = rz.body.reason || "";
  }
  var c = $("conn");
  c.textContent = S.rules && S.rules.status === 0 ? "daemon not answering" : (token() ? "token set" : "no token (read-only)");
  var p = $("pause"), ps = pauseState();
  p.disabled = !ps.available;
  p.classList.toggle("on", !!ps.paused);
  p.textContent = !ps.available ? "pause: n/a" : ps.paused ? "actions paused" + (ps.until ? " until " + hhmm(toDate(ps.until).getTime()) + " UTC" : "") + " — resume" : "pause actions";
  p.title = !ps.available ? "this daemon has no pause endpoint (" + API.pause + " answered 404)" : ps.reason || "";
}
function pauseState() {
  var r = S.pause;
  if (!r || r.status === 404 || r.status === 0) { return {available: false}; }
  if (r.status === 405) {  // the route is there for POST/DELETE only: the state is in /status
    var st = data("status", {});
    return stateOf(st.pause || st.paused || null);
  }
  return stateOf(r.data);
}
function stateOf(d) {
  if (!d || typeof d !== "object") { return {available: true, paused: !!d}; }
  var paused = "paused" in d ? !!d.paused : "active" in d ? !!d.active : !!d.until;
  return {available: true, paused: paused, until: d.until, reason: d.reason};
}
function onPause() {
  var ps = pauseState();
  if (ps.paused) {
    ask("Resume actions?", ["Actions run again as soon as their rules fire."], "Resume").then(function (ok) {
      if (ok) { write("DELETE", "pause", {}, function () { return "actions resumed"; }); }
    });
    return;
  }
  var sel = el("select");
  sel.id = "pause-for";
  [["30m", 1800], ["1h", 3600], ["2h", 7200], ["4h", 14400], ["8h", 28800], ["24h", 86400]].forEach(function (o) {
    var opt = el("option", null, o[0]); opt.value = o[1]; if (o[1] === 3600) { opt.selected = true; } add(sel, opt);
  });
  var reason = input("pause-reason", "text", "maintenance window");
  ask("Pause actions?", ["While paused every action step is only logged as would_run; alerts and notifications go on.",
    field("for", sel), field("reason", reason)], "Pause").then(function (ok) {
    if (!ok) { return; }
    var until = new Date(Date.now() + Number(sel.value) * 1000).toISOString();
    write("POST", "pause", {body: {until: until, reason: reason.value, by: localName() || "console"}}, function () { return "actions paused until " + iso(new Date(until)); });
  });
}
function onToken() {
  var i = input("token-input", "password", "API token");
  i.autocomplete = "off";
  ask("API token", ["Writes (silences, acks, runs, backtests, pause) need the daemon's API token; reads need it (or the read token) when API_READ_TOKEN is set. It stays in this tab only (sessionStorage).",
    field("token", i)], "Use").then(function (ok) {
    if (!ok) { return; }
    try { if (i.value) { sessionStorage.setItem(TOKEN_KEY, i.value); } else { sessionStorage.removeItem(TOKEN_KEY); } } catch (e) { /* private mode */ }
    refresh();
  });
  setTimeout(function () { i.focus(); }, 0);
}

// ---- views --------------------------------------------------------------------------------

function ruleList() {
  var out = [];
  (data("rules", {groups: []}).groups || []).forEach(function (g) {
    (g.rules || []).forEach(function (r) { out.push({group: g, rule: r}); });
  });
  return out;
}
function findRule(name, labels) {
  var all = ruleList().filter(function (x) { return x.rule.name === name; });
  var k = labelKey(labels || {});
  return all.filter(function (x) { return (x.rule.alerts || []).some(function (a) { return labelKey(a.labels) === k; }); })[0] || all[0] || null;
}
function historyStrip(rule) {
  var h = el("span", "hist");
  var entries = (rule.history || []).slice().reverse();  // oldest first, left to right
  for (var i = entries.length; i < 20; i++) { add(h, el("i", "none")); }
  entries.forEach(function (e) {
    var cell = el("i", e.error ? "error" : e.hits ? "hit" : "");
    cell.title = e.at + ": " + (e.error ? "error: " + e.error : (e.samples + " samples, " + e.hits + " hits, " + secs(e.duration)));
    add(h, cell);
  });
  return h;
}
function matchesFilter(text, filter) {
  text = text.toLowerCase();
  return filter.toLowerCase().split(/\s+/).every(function (w) { return !w || text.indexOf(w) >= 0; });
}

var views = {};

views.rules = function (root) {
  var open = {};
  var f = input("filter", "search", "filter: name, group, file, state, label…", prefill.filter || "");
  f.addEventListener("input", update);
  var s = section("Rules");
  var summary = el("span", "muted small");
  add(s.firstChild, summary);
  var list = el("div");
  add(s, add(el("div", "row"), f), list);
  add(root, s);
  function update() {
    clear(list);
    var p = problem("rules");
    if (p) { add(list, p); return; }
    var shown = 0, total = 0, states = {firing: 0, pending: 0, inactive: 0}, errors = 0;
    (data("rules").groups || []).forEach(function (g) {
      var block = null;
      (g.rules || []).forEach(function (r) {
        total++; states[r.state] = (states[r.state] || 0) + 1; if (r.health === "err") { errors++; }
        var text = [r.name, g.name, g.file, r.state, r.health, r.query, r.lastError, JSON.stringify(r.labels),
          (r.alerts || []).map(function (a) { return JSON.stringify(a.labels); }).join(" ")].join(" ");
        if (!matchesFilter(text, f.value)) { return; }
        shown++;
        if (!block) {
          block = add(el("div", "group"), add(el("h3"), g.name + "  ", el("span", "muted small", g.file + " · every " + dur(g.interval) + " · last " + (toDate(g.lastEvaluation) ? dur((Date.now() - toDate(g.lastEvaluation)) / 1000) + " ago" : "never"))));
          add(list, block);
        }
        var key = g.file + "\u0000" + g.name + "\u0000" + r.name;
        var row = el("div", "rule");
        row.setAttribute("data-rule", r.name);
        var name = button(r.name, "link rule-name", function () { open[key] = !open[key]; update(); });
        var cond = r.threshold ? "threshold " + r.threshold : r.severities ? Object.keys(r.severities).map(function (k) { return k + " " + r.severities[k]; }).join(", ") : "";
        add(row,
          add(el("div"), name, cond ? el("div", "muted small", cond) : null),
          add(el("div", "row"), badge(r.state), badge(r.health === "ok" ? "ok" : r.health === "err" ? "error" : r.health, r.health === "ok" ? "ok" : r.health === "err" ? "bad" : "grey")),
          add(el("div", "hist-cell"), historyStrip(r), el("div", "muted small", "last " + (toDate(r.lastEvaluation) ? dur((Date.now() - toDate(r.lastEvaluation)) / 1000) + " ago, took " + secs(r.evaluationTime) : "never"))),
          add(el("div", "err-cell"), r.lastError ? el("span", "err small", r.lastError) : (r.alerts || []).length ? el("span", "small", (r.alerts || []).length + " active alert" + ((r.alerts || []).length === 1 ? "" : "s")) : null));
        if (open[key]) { add(row, ruleDetailBox(g, r)); }
        add(block, row);
      });
    });
    summary.textContent = total + " rules · " + states.firing + " firing · " + states.pending + " pending · " + errors + " with errors" + (shown !== total ? " · " + shown + " shown" : "");
    if (!shown) { add(list, empty(total ? "no rule matches the filter" : "no rules loaded")); }
  }
  return {needs: ["rules"], update: update};
};

function ruleDetailBox(g, r) {
  var d = el("div", "detail");
  add(d, el("pre", null, r.query));
  var dl = el("dl", "kv");
  if (r.duration) { add(dl, el("dt", null, "for"), el("dd", null, dur(r.duration))); }
  if (Object.keys(r.labels || {}).length) { add(dl, el("dt", null, "labels"), add(el("dd"), chips(r.labels))); }
  Object.keys(r.annotations || {}).forEach(function (k) { add(dl, el("dt", null, k), el("dd", null, r.annotations[k])); });
  add(d, dl);
  var alerts = r.alerts || [];
  if (alerts.length) {
    add(d, el("h3", null, "Active alerts"), table(["state", "labels", "value", "since", ""], alerts.map(function (a) {
      return [badge(a.state), chips(a.labels, ["alertname"]), num(a.value), when(a.activeAt), alertLink(a.labels)];
    })));
  }
  add(d, el("h3", null, "Last evaluations (newest first)"), table(["at", "took", "samples", "hits", "error"], (r.history || []).map(function (h) {
    return [when(h.at), secs(h.duration), h.samples, h.hits === null ? "" : h.hits, h.error ? el("span", "err", h.error) : ""];
  }), "compact") || empty("not evaluated yet"));
  add(d, add(el("div", "row"),
    button("Chart", "", function () { location.hash = "#rule/" + encodeURIComponent(JSON.stringify([g.file, g.name, r.name])); }),
    button("Backtest…", "", function () { prefill.backtest = [g.file, g.name, r.name]; location.hash = "#backtest"; })));
  return d;
}
function alertLink(labels) {
  var a = el("a", null, "open");
  a.href = "#alert/" + encodeURIComponent(JSON.stringify(labels));
  return a;
}

function marks(a) {
  var out = [], am = (data("amAlerts", []) || []).filter(function (x) { return labelKey(x.labels) === labelKey(a.labels); })[0];
  if (am && am.status) {
    if ((am.status.silencedBy || []).length) { out.push(badge("silenced")); }
    if ((am.status.inhibitedBy || []).length) { out.push(badge("inhibited")); }
  }
  var inc = incidentOf(a);
  if (inc && inc.ack) { var b = badge("acked"); b.title = "by " + inc.ack.by + " at " + inc.ack.at; out.push(b); }
  return out;
}
function incidentOf(a) {
  var k = labelKey(a.labels);
  return (data("openIncidents", []) || []).filter(function (i) { return labelKey(i.labels) === k; })[0] || null;
}
function ackAlert(labels) {
  var by = input("ack-by", "text", "your name", localName());
  var comment = input("ack-comment", "text", "looking into it");
  ask("Acknowledge this alert?", [add(el("p"), chips(labels)), "Stops escalation and repeated notifications until it resolves.",
    field("by", by), field("comment", comment)], "Acknowledge").then(function (ok) {
    if (!ok) { return; }
    rememberName(by.value);
    var matchers = Object.keys(labels).map(function (k) { return {name: k, value: labels[k], isRegex: false, isEqual: true}; });
    write("POST", "acks", {body: {matchers: matchers, createdBy: by.value, comment: comment.value}},
      function (r) { return "acknowledged " + r.body.count + " alert" + (r.body.count === 1 ? "" : "s"); });
  });
}
function localName() { try { return sessionStorage.getItem("watchdog.name") || ""; } catch (e) { return ""; } }
function rememberName(n) { try { sessionStorage.setItem("watchdog.name", n); } catch (e) { /* ignore */ } }
function silenceAlert(labels) {
  prefill.silence = labelsAsMatchers(labels);
  location.hash = "#silences";
}

views.alerts = function (root) {
  var s = section("Active alerts");
  var f = input("alert-filter", "search", "filter alerts…");
  var list = el("div");
  f.addEventListener("input", update);
  add(s, add(el("div", "row"), f), list);
  add(root, s);
  function update() {
    clear(list);
    var p = problem("alerts");
    if (p) { add(list, p); return; }
    var rows = (data("alerts").alerts || []).filter(function (a) { return matchesFilter(JSON.stringify(a.labels) + " " + a.state, f.value); });
    add(list, table(["state", "alert", "labels", "value", "since", "", ""], rows.map(function (a) {
      var act = add(el("span", "row"), alertLink(a.labels),
        a.state === "firing" ? button("Silence…", "", function () { silenceAlert(a.labels); }) : null,
        a.state === "firing" && !(incidentOf(a) || {}).ack ? button("Ack…", "", function () { ackAlert(a.labels); }) : null);
      act.actionsCell = true;
      return [badge(a.state), el("b", null, a.labels.alertname), chips(a.labels, ["alertname"]), num(a.value), when(a.activeAt), add(el("span", "row"), marks(a)), act];
    })) || empty("no active alerts"));
  }
  return {needs: ["alerts", "amAlerts", "openIncidents"], update: update};
};

views.alert = function (root, arg) {
  var labels = {};
  try { labels = JSON.parse(arg) || {}; } catch (e) { labels = {}; }
  var s = section("Alert " + (labels.alertname || ""));
  var head = el("div"), chart = el("div", "chart-box"), links = el("div", "row"), info = el("div");
  var hours = 3, detail = null;
  var ranges = el("div", "row range");
  [1, 3, 6, 12, 24].forEach(function (h) {
    var b = button(h + "h", h === hours ? "on" : "", function () {
      hours = h;
      [].forEach.call(ranges.children, function (c) { c.classList.toggle("on", c === b); });
      if (detail) { ruleChart(chart, detail, hours, labels); }
    });
    add(ranges, b);
  });
  add(s, head, el("h3", null, "Value against the threshold"), ranges, chart, links, info);
  add(root, s);
  var loaded = false;
  function update() {
    var a = (data("alerts", {alerts: []}).alerts || []).filter(function (x) { return labelKey(x.labels) === labelKey(labels); })[0];
    clear(head);
    add(head, add(el("div", "row"), a ? badge(a.state) : badge("resolved"), a ? el("span", null, "value " + num(a.value)) : el("span", "muted", "no longer active"),
      a ? add(el("span", "muted"), "active since ", when(a.activeAt)) : null, a ? marks(a) : null));
    add(head, el("h3", null, "Labels"), chips(labels));
    if (a && Object.keys(a.annotations || {}).length) {
      var dl = el("dl", "kv");
      Object.keys(a.annotations).forEach(function (k) { add(dl, el("dt", null, k), el("dd", null, a.annotations[k])); });
      add(head, el("h3", null, "Annotations"), dl);
    }
    var inc = a && incidentOf(a);
    clear(info);
    if (inc) {
      add(info, el("h3", null, "Incident"), add(el("p", "small"), "fired ", when(inc.firedAt), inc.durationSeconds != null ? " · firing for " + dur(inc.durationSeconds) : "",
        inc.ack ? " · acknowledged by " + inc.ack.by : "", " · " + inc.notifications + " notifications",
        (inc.actions || []).length ? " · actions: " + inc.actions.map(function (x) { return x.name + " (" + x.status + ")"; }).join(", ") : ""));
    }
    if (!loaded && S.rules && S.rules.ok) {
      loaded = true;
      var found = findRule(labels.alertname, labels);
      if (!found) { add(clear(chart), empty("the rule " + (labels.alertname || "") + " is not loaded")); return; }
      call("GET", "ruleDetail", {query: {file: found.group.file, group: found.group.name, rule: found.rule.name}}).then(function (r) {
        if (!r.ok) { add(clear(chart), el("p", "err", r.error)); return; }
        detail = r.data;
        ruleChart(chart, detail, hours, labels);
        clear(links);
        if (detail.graphURL) {
          var g = el("a", null, "Open the expression in Prometheus");
          g.href = detail.graphURL; g.target = "_blank"; g.rel = "noopener noreferrer";
          add(links, g);
        }
        add(links, button("Silence…", "", function () { silenceAlert(labels); }), button("Ack…", "", function () { ackAlert(labels); }),
          button("Backtest…", "", function () { prefill.backtest = [detail.file, detail.group, detail.name]; location.hash = "#backtest"; }));
      });
    }
  }
  return {needs: ["alerts", "rules", "amAlerts", "openIncidents"], update: update};
};

views.rule = function (root, arg) {
  var ref = [];
  try { ref = JSON.parse(arg) || []; } catch (e) { ref = []; }
  var s = section("Rule " + (ref[2] || "")), chart = el("div", "chart-box"), links = el("div", "row"), pre = el("pre");
  add(s, chart, links, el("h3", null, "As written"), pre);
  add(root, s);
  call("GET", "ruleDetail", {query: {file: ref[0], group: ref[1], rule: ref[2]}}).then(function (r) {
    if (!r.ok) { add(clear(chart), el("p", "err", r.error)); return; }
    ruleChart(chart, r.data, 6, null);
    pre.textContent = r.data.yaml;
    if (r.data.graphURL) {
      var g = el("a", null, "Open the expression in Prometheus");
      g.href = r.data.graphURL; g.target = "_blank"; g.rel = "noopener noreferrer";
      add(links, g);
    }
    add(links, button("Backtest…", "", function () { prefill.backtest = ref; location.hash = "#backtest"; }));
  });
  return {needs: [], update: function () {}};
};

function matcherForm(prefix, title, okText, submit) {
  var s = section(title);
  var ta = el("textarea");
  ta.id = prefix + "-matchers";
  ta.placeholder = 'alertname="HighErrors"\ninstance=~"web-.*"';
  ta.value = prefill[prefix] || "";
  prefill[prefix] = "";
  var by = input(prefix + "-by", "text", "your name", localName());
  var comment = input(prefix + "-comment", "text", "why");
  var form = el("form", "grid");
  var extra = el("span");
  var go = el("button", "primary", okText);
  go.type = "submit"; go.id = prefix + "-submit";
  add(form, field("matchers (one per line: name=\"value\", !=, =~, !~)", ta, "full"), extra, field("created by", by), field("comment", comment), go);
  var preview = el("div", "preview-box");
  add(s, form, el("h3", null, "Preview"), preview);
  var rerun = previewer(ta, preview);
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var p = parseMatchers(ta.value);
    if (p.errors.length || !p.matchers.length) { toast(p.errors.join("; ") || "enter at least one matcher", true); return; }
    rememberName(by.value);
    submit(p.matchers.map(function (m) { return {name: m.name, value: m.value, isRegex: m.isRegex, isEqual: m.isEqual}; }), by.value, comment.value)
      .then(function (r) { if (r && r.ok) { ta.value = ""; rerun(); } });
  });
  return {section: s, extra: extra};
}

views.silences = function (root) {
  var sel = el("select");
  sel.id = "silence-duration";
  [["1h", 3600], ["2h", 7200], ["4h", 14400], ["8h", 28800], ["1d", 86400], ["3d", 259200], ["7d", 604800]].forEach(function (o) {
    var opt = el("option", null, o[0]); opt.value = o[1]; if (o[1] === 7200) { opt.selected = true; } add(sel, opt);
  });
  var form = matcherForm("silence", "New silence", "Create silence", function (matchers, by, comment) {
    var ends = new Date(Date.now() + Number(sel.value) * 1000).toISOString();
    return write("POST", "silences", {body: {matchers: matchers, endsAt: ends, createdBy: by, comment: comment}},
      function (r) { return "silence " + r.body.silenceID + " created, until " + iso(new Date(ends)); });
  });
  add(form.extra, field("for", sel));
  var s = section("Silences"), list = el("div");
  var showExpired = el("input"); showExpired.type = "checkbox"; showExpired.id = "show-expired";
  showExpired.addEventListener("change", update);
  add(s.firstChild, add(el("label", "small muted"), showExpired, " show expired"));
  add(s, list);
  add(root, s, form.section);
  function update() {
    clear(list);
    var p = problem("silences");
    if (p) { add(list, p); return; }
    var rows = (data("silences", []) || []).filter(function (x) { return showExpired.checked || x.status.state !== "expired"; });
    add(list, table(["state", "matchers", "created by", "comment", "starts", "ends", ""], rows.map(function (x) {
      var m = el("span");
      x.matchers.forEach(function (mm) { add(m, el("span", "chip", matcherText(mm))); });
      var act = x.status.state === "expired" ? el("span") : button("Expire", "danger expire", function () {
        ask("Expire this silence?", [m.cloneNode(true), "Notifications for what it matched go out again."], "Expire", true).then(function (ok) {
          if (ok) { write("DELETE", "silence", {params: {id: x.id}}, function () { return "silence " + x.id + " expired"; }); }
        });
      });
      act.actionsCell = true;
      var row = [badge(x.status.state === "active" ? "silenced" : x.status.state), m, x.createdBy, x.comment, when(x.startsAt), when(x.endsAt), act];
      row.cls = x.status.state === "expired" ? "dim" : "";
      return row;
    })) || empty("no silences"));
  }
  return {needs: ["silences"], update: update};
};

views.acks = function (root) {
  var form = matcherForm("ack", "Acknowledge by matchers", "Acknowledge", function (matchers, by, comment) {
    return write("POST", "acks", {body: {matchers: matchers, createdBy: by, comment: comment}},
      function (r) { return "acknowledged " + r.body.count + " alert" + (r.body.count === 1 ? "" : "s"); });
  });
  var s = section("Open incidents and their acks"), list = el("div");
  add(s, list);
  add(root, s, form.section);
  function update() {
    clear(list);
    var p = problem("openIncidents");
    if (p) { add(list, p); return; }
    var rows = (data("openIncidents", []) || []).filter(function (i) { return i.firedAt; });
    add(list, table(["rule", "labels", "firing for", "ack", ""], rows.map(function (i) {
      var ack = i.ack ? add(el("span"), badge("acked"), " by " + i.ack.by + " ", when(i.ack.at)) : badge("not acked", "bad");
      var act = i.ack ? el("span") : button("Ack…", "", function () { ackAlert(i.labels); });
      act.actionsCell = true;
      return [el("b", null, i.rule), chips(i.labels, ["alertname"]), dur(i.durationSeconds), ack, act];
    })) || empty("no firing incidents"));
  }
  return {needs: ["openIncidents"], update: update};
};

views.incidents = function (root) {
  var s = section("Incidents"), cards = el("div", "cards"), list = el("div");
  var f = input("incident-filter", "search", "filter: rule, label, state…");
  f.addEventListener("input", update);
  add(s, cards, add(el("div", "row"), f), list);
  add(root, s);
  function card(label, value, note) { return add(el("div", "card"), el("span", "muted small", label), el("b", null, value), note ? el("span", "muted small", note) : null); }
  function update() {
    clear(list); clear(cards);
    var p = problem("incidents");
    if (p) { add(list, p); return; }
    var all = data("incidents", []) || [];
    var resolved = all.filter(function (i) { return i.state === "resolved" && i.durationSeconds != null; });
    var ds = resolved.map(function (i) { return i.durationSeconds; }).sort(function (a, b) { return a - b; });
    var mttr = ds.length ? ds.reduce(function (a, b) { return a + b; }, 0) / ds.length : null;
    add(cards, card("open", all.filter(function (i) { return i.state === "open"; }).length),
      card("resolved", resolved.length, "of the last " + all.length),
      card("MTTR", mttr === null ? "–" : dur(mttr), "firing → resolved, mean"),
      card("median", ds.length ? dur(ds[Math.floor(ds.length / 2)]) : "–"),
      card("longest", ds.length ? dur(ds[ds.length - 1]) : "–"));
    var rows = all.filter(function (i) { return matchesFilter([i.rule, i.state, i.severity, JSON.stringify(i.labels)].join(" "), f.value); });
    add(list, table(["state", "rule", "labels", "severity", "fired", "resolved", "duration", "ack", "actions", "notified"], rows.map(function (i) {
      return [badge(i.state === "open" ? (i.firedAt ? "firing" : "pending") : "resolved"), el("b", null, i.rule), chips(i.labels, ["alertname", "severity"]), i.severity || "",
        i.firedAt ? when(i.firedAt) : el("span", "muted", "never fired"), i.resolvedAt ? when(i.resolvedAt) : "", dur(i.durationSeconds),
        i.ack ? "by " + i.ack.by : "", (i.actions || []).map(function (a) { return a.name + ": " + a.status; }).join(", "), i.notifications];
    })) || empty("no incidents"));
  }
  return {needs: ["incidents"], update: update};
};

function stepList(steps) {
  var ol = el("ol", "steps small");
  (steps || []).forEach(function (st) {
    var li = add(el("li"), el("b", null, st.kind), " ", badge(st.status), st.duration != null ? " " + secs(st.duration) : "", st.detail ? " — " + st.detail : "");
    if (st.output) { add(li, el("pre", null, st.output)); }
    add(ol, li);
  });
  return ol;
}
function parseLabels(text) {
  var out = {}, bad = [];
  text.split(/\n|,/).forEach(function (l) {
    l = l.trim();
    if (!l) { return; }
    var m = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"?(.*?)"?$/.exec(l);
    if (m) { out[m[1]] = m[2]; } else { bad.push(l); }
  });
  return {labels: out, errors: bad};
}

views.runs = function (root) {
  var s = section("Run an action"), form = el("form", "grid");
  var sel = el("select"); sel.id = "action-name";
  var labels = el("textarea"); labels.id = "action-labels"; labels.placeholder = "service=checkout\nnamespace=prod";
  var steps = el("div", "muted small");
  var dry = button("Dry run…", "", function () { go(true); }); dry.id = "action-dry";
  var real = button("Run now…", "danger", function () { go(false); }); real.id = "action-run";
  add(form, field("action", sel), steps, field("labels (name=value, one per line)", labels, "full"), add(el("div", "row full"), dry, real));
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  var runs = section("Action runs"), list = el("div");
  add(s, form); add(runs, list);
  add(root, s, runs);
  var filled = false;
  function describe() {
    var a = (data("actions", []) || []).filter(function (x) { return x.name === sel.value; })[0];
    steps.textContent = a ? "steps: " + a.steps.join(" → ") + (a.cooldown ? " · cooldown " + dur(a.cooldown) : "") + (a.rules.length ? " · used by " + a.rules.join(", ") : "") : "";
  }
  sel.addEventListener("change", describe);
  function go(dryRun) {
    var p = parseLabels(labels.value);
    if (p.errors.length) { toast("not a label: " + p.errors.join("; "), true); return; }
    if (!sel.value) { toast("no action selected", true); return; }
    var what = dryRun ? "Dry run of " + sel.value : "Run " + sel.value + " now";
    ask(what + "?", [dryRun ? "Every step is logged as would_run; nothing is called." : "The steps run for real: " + steps.textContent,
      add(el("p"), "labels: ", Object.keys(p.labels).length ? chips(p.labels) : "(none)")], dryRun ? "Dry run" : "Run now", !dryRun).then(function (ok) {
      if (!ok) { return; }
      write("POST", "run", {params: {name: sel.value}, body: {labels: p.labels, dry_run: dryRun}},
        function (r) { return (dryRun ? "dry run " : "run ") + r.body.runID + ": " + r.body.status; });
    });
  }
  function update() {
    if (!filled && S.actions) {
      filled = true;
      clear(sel);
      (data("actions", []) || []).forEach(function (a) { var o = el("option", null, a.name); o.value = a.name; add(sel, o); });
      if (!sel.options.length) { add(sel, el("option", null, "(no actions defined)")); sel.disabled = dry.disabled = real.disabled = true; }
      describe();
    }
    clear(list);
    var p = problem("runs");
    if (p) { add(list, p); return; }
    add(list, table(["status", "action", "trigger", "rule / labels", "started", "finished", "steps", "verification"], (data("runs", []) || []).map(function (r) {
      return [add(el("span"), badge(r.status), r.dryRun && r.status !== "dry_run" ? [" ", badge("dry run", "grey")] : null), el("b", null, r.action), r.trigger,
        add(el("span"), r.rule ? el("div", null, r.rule) : null, chips(r.labels, ["alertname"])), when(r.createdAt), r.finishedAt ? when(r.finishedAt) : "",
        add(el("div"), stepList(r.steps), r.detail ? el("div", "muted small", r.detail) : null), r.verification ? badge(r.verification) : ""];
    })) || empty("no action runs yet"));
  }
  return {needs: ["actions", "runs"], update: update};
};

views.deploys = function (root) {
  var s = section("Deploys"), list = el("div");
  add(s, list); add(root, s);
  function update() {
    clear(list);
    var p = problem("deploys");
    if (p) { add(list, p); return; }
    add(list, table(["verdict", "service", "version", "labels", "deployed", "window ends", "summary"], (data("deploys", []) || []).map(function (d) {
      return [badge(d.status === "open" ? "watching" : d.status), el("b", null, d.service), d.version, chips(d.labels), when(d.at), when(d.windowEnd), d.summary];
    })) || empty("no deploy markers"));
  }
  return {needs: ["deploys"], update: update};
};

views.backtest = function (root) {
  var s = section("Backtest a rule"), form = el("form", "grid");
  var sel = el("select"); sel.id = "bt-rule";
  var ta = el("textarea"); ta.id = "bt-yaml"; ta.rows = 10; ta.spellcheck = false; ta.wrap = "off";
  ta.placeholder = "alert: HighErrors\nexpr: errors > 0.1\nfor: 5m";
  var hours = input("bt-hours", "number", "", "6"); hours.min = "0.25"; hours.max = "168"; hours.step = "any";
  var step = input("bt-step", "text", "the group's interval");
  var go = el("button", "primary", "Run backtest"); go.type = "submit"; go.id = "bt-run";
  add(form, field("rule (prefills its YAML)", sel, "full"), field("rule YAML (edit freely)", ta, "full"),
    field("last hours", hours), field("step (optional)", step), go);
  var out = section("Result"); out.id = "bt-result";
  var result = el("div");
  add(out, result);
  add(s, form);
  add(root, s, out);
  var chosen = null;
  function choose(ref) {
    var found = ruleList().filter(function (x) { return x.group.file === ref[0] && x.group.name === ref[1] && x.rule.name === ref[2]; })[0];
    chosen = found ? ref : null;
    if (!found) { return; }
    call("GET", "ruleDetail", {query: {file: ref[0], group: ref[1], rule: ref[2]}}).then(function (r) {
      if (r.ok) { ta.value = r.data.yaml; chosen = ref.concat([r.data.interval]); }
    });
  }
  sel.addEventListener("change", function () { if (sel.value) { choose(JSON.parse(sel.value)); } });
  var filled = false;
  function update() {
    if (filled || !S.rules || !S.rules.ok) { return; }
    filled = true;
    add(sel, add(el("option", null, "(write a rule below)"), null));
    sel.options[0].value = "";
    ruleList().forEach(function (x) {
      if (x.group.file === "<built-in>") { return; }
      var o = el("option", null, x.group.name + " / " + x.rule.name);
      o.value = JSON.stringify([x.group.file, x.group.name, x.rule.name]);
      add(sel, o);
    });
    var want = prefill.backtest;
    prefill.backtest = null;
    if (want) { sel.value = JSON.stringify(want.slice(0, 3)); choose(want); }
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var body = {yaml: ta.value, hours: Number(hours.value)};
    if (step.value.trim()) { body.step = step.value.trim(); }
    if (chosen) { body.group = chosen[1]; if (chosen[3]) { body.interval = chosen[3] + "s"; } }
    go.disabled = true;
    add(clear(result), empty("replaying the last " + body.hours + "h…"));
    call("POST", "backtest", {body: body}).then(function (r) {
      go.disabled = false;
      clear(result);
      if (!r.ok) { add(result, el("p", "err", r.error)); return; }
      drawBacktest(result, r.data);
    });
  });
  return {needs: ["rules"], update: update};
};

// A lane's title, cut to what fits (the whole text in its tooltip).
function laneLabel(text, x, y, max) {
  var t = svg("text", {x: x, y: y}, text.length > max ? text.slice(0, max - 1) + "…" : text);
  add(t, svg("title", {}, text));
  return t;
}
function drawBacktest(box, d) {
  var fired = 0, actions = 0, lanes = [];
  d.rules.forEach(function (r) {
    actions += r.actions.length;
    var byKey = {};
    r.intervals.forEach(function (iv) {
      if (iv.firingAt != null) { fired++; }
      var k = r.name + labelKey(Object.assign({}, iv.labels, {severity: ""}));
      if (!byKey[k]) { byKey[k] = {rule: r, labels: iv.labels, intervals: [], actions: []}; lanes.push(byKey[k]); }
      byKey[k].intervals.push(iv);
    });
    r.actions.forEach(function (a) {
      var k = r.name + labelKey(Object.assign({}, a.labels, {severity: ""}));
      if (!byKey[k]) { byKey[k] = {rule: r, labels: a.labels, intervals: [], actions: []}; lanes.push(byKey[k]); }
      byKey[k].actions.push(a);
    });
  });
  add(box, el("p", "bt-summary", "Over " + dur(d.end - d.start) + " (" + iso(new Date(d.start * 1000)) + " → " + iso(new Date(d.end * 1000)) + (d.step ? ", every " + d.step + "s" : "") + "): " +
    (fired ? "would have fired " + fired + " time" + (fired === 1 ? "" : "s") : "would not have fired") + (actions ? ", " + actions + " action run" + (actions === 1 ? "" : "s") + " would have started" : "") + "."));
  d.warnings.forEach(function (w) { add(box, el("p", "wrn small", w)); });
  d.rules.forEach(function (r) { if (r.error) { add(box, el("p", "err", r.name + ": " + r.error)); } });
  if (lanes.length) {
    var W = Math.max(300, box.clientWidth || 600), L = 8, R = 8, lane = 34, T = 6, H = T + lanes.length * lane + 22;
    var x = function (t) { return L + (t - d.start) / (d.end - d.start) * (W - L - R); };
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "backtest timeline", "class": "timeline"});
    lanes.forEach(function (ln, i) {
      var y0 = T + i * lane;
      add(g, svg("rect", {x: L, y: y0 + 14, width: W - L - R, height: 14, "class": "lane"}),
        laneLabel(ln.rule.name + " " + Object.keys(ln.labels).filter(function (k) { return k !== "alertname"; }).map(function (k) { return k + "=" + ln.labels[k]; }).join(" "), L, y0 + 10, Math.floor((W - L - R) / 6)));
      ln.intervals.forEach(function (iv) {
        var a = iv.pendingAt != null ? iv.pendingAt : iv.firingAt, f = iv.firingAt, e = iv.resolvedAt != null ? iv.resolvedAt : d.end;
        if (a != null) { add(g, svg("rect", {x: x(a), y: y0 + 14, width: Math.max(2, x(f != null ? f : e) - x(a)), height: 14, "class": "pending"})); }
        if (f != null) {
          var bar = svg("rect", {x: x(f), y: y0 + 14, width: Math.max(2, x(e) - x(f)), height: 14, "class": "firing"});
          add(bar, svg("title", {}, "firing " + iso(new Date(f * 1000)) + " → " + (iv.resolvedAt != null ? iso(new Date(e * 1000)) : "end") + (iv.maxValue != null ? ", max " + num(iv.maxValue) : "")));
          add(g, bar);
        }
      });
      ln.actions.forEach(function (ac) {
        var ax = x(ac.at), tri = svg("path", {d: "M" + ax + " " + (y0 + 30) + "l-5 7h10z", "class": "action"});
        add(tri, svg("title", {}, ac.action + " would run at " + iso(new Date(ac.at * 1000))));
        add(g, tri);
      });
    });
    timeTicks(d.start, d.end, W < 500 ? 4 : 7).forEach(function (t) {
      add(g, svg("text", {x: x(t), y: H - 4, "text-anchor": "middle"}, hhmm(t * 1000)));
    });
    add(box, g, add(el("div", "legend"), add(el("span"), el("i", "sw pending"), "pending"), add(el("span"), el("i", "sw firing"), "firing"),
      add(el("span"), el("i", "sw action"), "action would run"), el("span", null, "times in UTC")));
  }
  var rows = [];
  d.rules.forEach(function (r) {
    r.intervals.forEach(function (iv) {
      var end = iv.resolvedAt != null ? iv.resolvedAt : d.end;
      rows.push([el("b", null, r.name), chips(iv.labels, ["alertname"]), iv.pendingAt != null ? iso(new Date(iv.pendingAt * 1000)) : "",
        iv.firingAt != null ? iso(new Date(iv.firingAt * 1000)) : el("span", "muted", "never fired"),
        iv.resolvedAt != null ? iso(new Date(iv.resolvedAt * 1000)) : el("span", "muted", "still firing at the end"),
        iv.firingAt != null ? dur(end - iv.firingAt) : "", num(iv.maxValue)]);
    });
  });
  add(box, fold("When it would have fired", rows.length, table(["rule", "labels", "pending", "firing", "resolved", "firing for", "max value"], rows) || empty("no pending or firing interval in this range")));
  var acts = [];
  d.rules.forEach(function (r) { r.actions.forEach(function (a) { acts.push([el("b", null, a.action), r.name, chips(a.labels, ["alertname"]), iso(new Date(a.at * 1000))]); }); });
  add(box, fold("Actions that would have run", acts.length, table(["action", "rule", "labels", "at"], acts) || empty("none")));
}

// The replicas sharing the groups (README, "Many replicas"): who is live, what each holds, and
// each group's holder. One process on SQLite shows as a single replica holding everything.
var ROLE_NAMES = {"~leader": "leader (notifies)", "<builtin>": "self-alerts"};
function replicaTables(st) {
  var out = el("div");
  var reps = (st.replicas || []).slice().sort(function (x, y) { return x.id < y.id ? -1 : x.id > y.id ? 1 : 0; });
  add(out, table(["replica", "state", "holds", "last seen", "started"], reps.map(function (r) {
    var groups = (r.groups || []).filter(function (g) { return !ROLE_NAMES[g]; });
    var roles = (r.groups || []).filter(function (g) { return ROLE_NAMES[g]; });
    var row = [add(el("span"), el("span", "mono replica-id", r.id), r.self ? [" ", badge("this one", "grey")] : null),
      badge(r.live ? "live" : "down", r.live ? "ok" : "bad"),
      add(el("span"), roles.map(function (g) { return [badge(ROLE_NAMES[g], ""), " "]; }),
        groups.length + " group" + (groups.length === 1 ? "" : "s")),
      when(r.lastSeen), when(r.startedAt || (r.self ? st.startedAt : null))];
    row.cls = r.live ? "" : "dim";
    return row;
  }), "stack replicas") || empty("no replica has reported yet"));
  var groups = (st.groups || []).slice().sort(function (x, y) { return x.name < y.name ? -1 : x.name > y.name ? 1 : 0; });
  if (groups.length) {
    add(out, fold("Rule groups and their replica", groups.length, table(["group", "file", "replica", "last evaluation", "took"], groups.map(function (g) {
      return [el("b", null, g.name), el("span", "mono small", g.file),
        g.replica ? el("span", "mono", g.replica) : el("span", "muted", "none (moving)"),
        when(g.lastEvaluation), secs(g.evaluationTime)];
    }), "stack groups")));
  }
  return out;
}

views.status = function (root) {
  var ready = section("Readiness"), files = section("Rule files"), failed = section("Failed notifications");
  var reps = section("Replicas", "replicas");
  var a = el("div"), b = el("div"), c = el("div"), d = el("div");
  add(ready, a); add(files, b); add(failed, c); add(reps, d);
  add(root, add(el("div", "two"), ready, failed), reps, files);
  function update() {
    clear(a); clear(b); clear(c); clear(d);
    var rz = S.readyz && S.readyz.body;
    if (rz && rz.checks) {
      var dl = el("dl", "kv");
      Object.keys(rz.checks).forEach(function (k) { add(dl, el("dt", null, k), add(el("dd"), badge(rz.checks[k].ok ? "ok" : "down"), " ", rz.checks[k].detail)); });
      add(a, dl);
    }
    var st = data("status");
    if (st) {
      add(d, replicaTables(st));
      add(a, el("p", "muted small", "version " + st.version + " · started " + (toDate(st.startedAt) ? iso(toDate(st.startedAt)) : "?") + " · rules in " + st.rulesDir + (st.replica ? " · replica " + st.replica : "")));
      add(b, table(["file", "status", "problems"], st.files.map(function (f) {
        return [el("span", "mono", f.path), badge(f.status), add(el("div"), f.errors.map(function (e) { return el("div", "err small", e); }), f.warnings.map(function (w) { return el("div", "wrn small", w); }))];
      })) || empty("no rule files"));
      if ((st.lastErrors || []).length) {
        add(b, el("h3", null, "Recent evaluation errors"), table(["group", "rule", "error", "count", "last"], st.lastErrors.map(function (e) {
          return [e.group, e.rule || "", el("span", "err", e.error), e.count, when(e.last)];
        })));
      }
    }
    var p = problem("failed");
    if (p) { add(c, p); } else {
      add(c, table(["receiver", "alert", "error", "at"], (data("failed", []) || []).map(function (n) {
        return [n.receiver, n.alertname || n.group_key || "", el("span", "err small", n.last_error || n.error || ""), when(n.updated_at || n.created_at)];
      })) || empty("none"));
    }
  }
  return {needs: ["status", "failed"], update: update};
};

// ---- routing and refresh --------------------------------------------------------------------

var inflight = false;
function refresh() {
  if (inflight) { refresh.again = true; return Promise.resolve(); }
  inflight = true;
  var keys = ["readyz", "pause", "status"].concat(view ? view.needs : []);
  return load(keys.filter(function (k, i) { return keys.indexOf(k) === i; })).then(function (answers) {
    inflight = false;
    // reads need a token on this daemon (API_READ_TOKEN): ask for it once, by itself
    if (!token() && !refresh.asked && answers.some(function (r) { return r.status === 401; })) {
      refresh.asked = true;
      onToken();
    }
    renderHeader();
    if (view) { view.update(); }
    if (refresh.again) { refresh.again = false; refresh(); }
  });
}
function route() {
  var h = location.hash.replace(/^#/, ""), name = h.split("/")[0] || "rules", arg = decodeURIComponent(h.slice(name.length + 1));
  if (!views[name]) { name = "rules"; }
  [].forEach.call(document.querySelectorAll("nav a"), function (a) {
    a.classList.toggle("on", a.getAttribute("href") === "#" + (name === "alert" ? "alerts" : name === "rule" ? "rules" : name));
  });
  var root = clear($("view"));
  view = views[name](root, arg);
  document.body.setAttribute("data-view", name);
  refresh();
}
document.addEventListener("DOMContentLoaded", function () {
  $("pause").addEventListener("click", onPause);
  $("token").addEventListener("click", onToken);
  window.addEventListener("hashchange", route);
  route();
  setInterval(refresh, REFRESH_MS);
});
