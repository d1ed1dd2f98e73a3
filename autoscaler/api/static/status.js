// The status page: reads the admin API's open JSON endpoints and redraws every few seconds.
// Only text is ever inserted (textContent, never innerHTML): pool names and reasons come from the daemon.
// URL parameters: ?refresh=SECONDS (default 5) and ?hours=HOURS of chart history (default 3).
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const REFRESH_MS = Math.max(0.5, Number(params.get("refresh")) || 5) * 1000;
  const HOURS = Math.min(168, Math.max(0.01, Number(params.get("hours")) || 3));
  const SVG = "http://www.w3.org/2000/svg";
  const STATE_ORDER = ["pending", "requested", "provisioning", "running", "ready", "unhealthy", "draining", "terminating"];

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText)));
  }

  function num(value, digits) {
    if (value === null || value === undefined) return "–";
    const d = digits === undefined ? 2 : digits;
    return String(Math.round(value * 10 ** d) / 10 ** d);
  }

  function td(text, field, cls) {
    const attrs = {};
    if (field) attrs["data-field"] = field;
    if (cls) attrs.class = cls;
    return el("td", attrs, text);
  }

  function clock(iso) {
    // "2025-03-01T12:00:05.123Z" -> "12:00:05" (the daemon's clock, in UTC)
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? iso : t.toISOString().slice(11, 19);
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // ------------------------------------------------------------------ sections

  function renderPools(pools, endpoints) {
    const perPool = {};
    for (const ep of endpoints) perPool[ep.pool] = (perPool[ep.pool] || 0) + 1;
    const rows = pools.map((p) => {
      const state = el("td", { "data-field": "state" });
      if (p.paused) state.append(el("span", { class: "tag warn" }, "paused"));
      if (p.override) state.append(el("span", { class: "tag warn" }, "override " + num(p.override.capacity)));
      if (p.holding) state.append(el("span", { class: "tag bad", title: p.hold_reason }, "holding"));
      if (!state.childNodes.length) state.append(el("span", { class: "tag" }, p.desired === null ? "no decision yet" : "scaling"));
      return el(
        "tr",
        { "data-pool": p.name },
        td(p.name, "name"),
        td(num(p.desired), "desired", "num"),
        td(num(p.ready), "ready", "num"),
        td(num(p.booting), "booting", "num"),
        td(num(p.draining), "draining", "num"),
        td(num(p.min_capacity) + "–" + num(p.max_capacity), "limits", "num"),
        td(num(p.spend_usd_per_hour), "spend", "num"),
        td(String(p.live_instances), "instances", "num"),
        td(String(perPool[p.name] || 0), "endpoints", "num"),
        state,
        td(p.signal || "", "signal"),
      );
    });
    fill(document.querySelector("#pools tbody"), rows, 11, "no pools in the policy");
  }

  function stepPath(points, x, y) {
    let d = "";
    points.forEach((p, i) => {
      const px = x(p.t).toFixed(1);
      const py = y(p.v).toFixed(1);
      d += i === 0 ? "M" + px + " " + py : "H" + px + "V" + py;
    });
    if (points.length) d += "H" + x(points[points.length - 1].end).toFixed(1);
    return d;
  }

  function renderChart(pool, history) {
    const W = 800, H = 180, L = 44, R = 52, T = 10, B = 22;
    const t0 = Date.parse(history.since), t1 = Date.parse(history.now);
    const span = Math.max(1, t1 - t0);
    const pts = pool.points.map((p) => ({ ...p, t: Date.parse(p.at) }));
    const capMax = Math.max(1, ...pts.map((p) => Math.max(p.desired, p.ready + p.booting)));
    const spendMax = Math.max(1, ...pts.map((p) => p.spend_usd_per_hour));
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const yCap = (v) => T + (1 - v / capMax) * (H - T - B);
    const ySpend = (v) => T + (1 - v / spendMax) * (H - T - B);

    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "capacity of pool " + pool.pool });
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: W - R, y1: T, x2: W - R, y2: H - B }));
    const label = (text, attrs) => {
      const node = svg("text", attrs);
      node.textContent = text;
      root.append(node);
    };
    label(num(capMax), { x: L - 4, y: T + 8, "text-anchor": "end" });
    label("0", { x: L - 4, y: H - B, "text-anchor": "end" });
    label("units", { x: L - 4, y: (T + H - B) / 2, "text-anchor": "end" });
    label("$" + num(spendMax), { x: W - R + 4, y: T + 8 });
    label("$/h", { x: W - R + 4, y: (T + H - B) / 2 });
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (span * i) / 4;
      label(clock(new Date(t).toISOString()), { x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
    }
    const series = (value, scale, color, dash) => {
      const points = pts.map((p, i) => ({ t: p.t, v: value(p), end: i + 1 < pts.length ? pts[i + 1].t : t1 }));
      const attrs = { d: stepPath(points, x, scale), fill: "none", stroke: color, "stroke-width": 2 };
      if (dash) attrs["stroke-dasharray"] = dash;
      root.append(svg("path", attrs));
    };
    if (pts.length) {
      series((p) => p.ready + p.booting, yCap, "#e3a008");
      series((p) => p.ready, yCap, "#1a9c5b");
      series((p) => p.desired, yCap, "#7a5af5", "6 4");
      series((p) => p.spend_usd_per_hour, ySpend, "#d9480f", "2 3"); // last: dotted, visible over the others
    } else {
      label("no decisions in this period", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    }
    const last = pts[pts.length - 1];
    const caption = last
      ? `desired ${num(last.desired)}, ready ${num(last.ready)}, booting ${num(last.booting)} units; $${num(last.spend_usd_per_hour)}/h`
      : "";
    return el("div", { class: "chart", "data-pool": pool.pool, "data-points": String(pts.length) },
      el("h3", {}, pool.pool, " ", el("span", { class: "muted" }, caption)), root);
  }

  function renderCharts(history) {
    document.getElementById("hours").textContent = HOURS >= 1 ? num(HOURS, 1) + " h" : num(HOURS * 60, 1) + " min";
    document.getElementById("charts").replaceChildren(...history.pools.map((p) => renderChart(p, history)));
  }

  function renderInstances(instances) {
    const states = STATE_ORDER.filter((s) => instances.some((i) => i.state === s));
    const groups = new Map();
    for (const inst of instances) {
      const key = inst.offering.cloud + "\u0000" + inst.offering.market;
      if (!groups.has(key)) groups.set(key, { cloud: inst.offering.cloud, market: inst.offering.market, n: {}, units: 0, spend: 0 });
      const g = groups.get(key);
      g.n[inst.state] = (g.n[inst.state] || 0) + 1;
      g.units += inst.capacity_units;
      g.spend += inst.price_usd_per_hour;
    }
    const head = el("tr", {}, el("th", {}, "cloud"), el("th", {}, "market"),
      ...states.map((s) => el("th", { class: "num" }, s)), el("th", { class: "num" }, "units"), el("th", { class: "num" }, "$/h"));
    document.querySelector("#instances thead").replaceChildren(head);
    const rows = [...groups.values()]
      .sort((a, b) => (a.cloud + a.market).localeCompare(b.cloud + b.market))
      .map((g) => el("tr", { "data-cloud": g.cloud, "data-market": g.market },
        td(g.cloud), td(g.market),
        ...states.map((s) => td(String(g.n[s] || 0), s, "num")),
        td(num(g.units), "units", "num"), td(num(g.spend), "spend", "num")));
    fill(document.querySelector("#instances tbody"), rows, states.length + 4, "no live instances");
  }

  function renderBlocked(capacity) {
    const rows = capacity.blocked.map((b) => el("tr", {},
      td(b.description, "offering", "long"), td(b.kind), td(String(b.failures), "", "num"),
      td(clock(b.until)), td(duration(b.seconds_left), "left", "num"), td(b.reason, "reason", "long")));
    fill(document.querySelector("#blocked tbody"), rows, 6, "no offering is blocked");
  }

  function renderEndpoints(endpoints) {
    const rows = endpoints.map((e) => el("tr", { "data-pool": e.pool },
      td(e.pool), td((e.address.includes(":") ? "[" + e.address + "]" : e.address) + ":" + e.port, "address"),
      td(e.cloud), td(e.zone), td(e.market), td(e.instance_type), td(num(e.capacity_units), "", "num")));
    fill(document.querySelector("#endpoints tbody"), rows, 7, "no ready instance has an address yet");
  }

  function renderDecisions(decisions) {
    const rows = decisions.map((d) => {
      const why = el("ul", { class: "reasons" });
      for (const r of d.reasons) why.append(el("li", {}, r));
      for (const c of d.chosen) why.append(el("li", {}, "chosen: " + c));
      for (const s of d.skipped.slice(0, 5)) why.append(el("li", { class: "muted" }, "skipped " + s.offering + ": " + s.reason));
      if (d.skipped.length > 5) why.append(el("li", { class: "muted" }, "… and " + (d.skipped.length - 5) + " more skipped"));
      return el("tr", { "data-pool": d.pool }, td(clock(d.at)), td(d.pool), td(num(d.desired), "desired", "num"),
        td(num(d.ready), "ready", "num"), el("td", {}, why));
    });
    fill(document.querySelector("#decisions tbody"), rows, 5, "no decisions yet");
  }

  // ------------------------------------------------------------------ the loop

  async function refresh() {
    const problem = document.getElementById("problem");
    try {
      const [pools, history, instances, capacity, endpoints, decisions, policy] = await Promise.all([
        getJSON("/v1/pools"),
        getJSON("/v1/history?hours=" + HOURS),
        getJSON("/v1/instances"),
        getJSON("/v1/capacity?limit=1"),
        getJSON("/v1/endpoints"),
        getJSON("/v1/decisions?limit=15"),
        getJSON("/v1/policy"),
      ]);
      renderPools(pools, endpoints);
      renderCharts(history);
      renderInstances(instances);
      renderBlocked(capacity);
      renderEndpoints(endpoints);
      renderDecisions(decisions);
      document.getElementById("version").textContent = "policy " + policy.sha256.slice(0, 12) + " from " + policy.source;
      document.getElementById("mode").classList.toggle("hidden", !policy.dry_run);
      const refreshed = document.getElementById("refreshed");
      refreshed.textContent = "updated " + clock(history.now) + " UTC";
      refreshed.dataset.count = String(Number(refreshed.dataset.count || 0) + 1);
      problem.classList.add("hidden");
      problem.textContent = "";
    } catch (err) {
      problem.textContent = "cannot read the admin API (" + err.message + "); showing the last good view";
      problem.classList.remove("hidden");
    } finally {
      window.setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
