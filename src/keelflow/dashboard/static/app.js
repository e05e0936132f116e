/* keelflow dashboard: one page over the JSON API under api/ (plain JavaScript, no build step).
 * Routes: #/ (workflows), #/workflows/<id>, #/actors, #/actors/<id>. Each view polls the API
 * every second and redraws only what changed. */
(function () {
  "use strict";

  const STATUSES = ["RUNNING", "RESUMABLE", "FAILED", "CANCELED", "SUCCESSFUL"];
  const STEP_STATUSES = ["SUCCESSFUL", "CONTINUED", "FAILED", "RUNNING", "PENDING"];
  const COLORS = {
    SUCCESSFUL: "#2e9d5b", CONTINUED: "#7b61c9", FAILED: "#d64545", RUNNING: "#2f7de1", PENDING: "#e7eaf0",
  };
  const POLL_MS = 1000;

  // Exposed for tests and for poking at from the browser console.
  const dash = (window.keelflowDash = { cy: null, layouts: 0, view: null, refreshes: 0 });

  // -- the token ---------------------------------------------------------------------------------
  // Opened as ?token=…: keep it for this tab and send it as a Bearer header on every API call.
  const params = new URLSearchParams(location.search);
  if (params.get("token")) sessionStorage.setItem("keelflow-token", params.get("token"));
  const token = sessionStorage.getItem("keelflow-token");
  if (token) document.getElementById("metrics-link").href = "metrics?token=" + encodeURIComponent(token);

  async function api(path, method) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (method === "POST") headers["X-Requested-By"] = "keelflow";
    const response = await fetch(path, { method: method || "GET", headers, cache: "no-store" });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      body = { error: text };
    }
    if (!response.ok) {
      const error = new Error((body && body.error) || response.statusText);
      error.status = response.status;
      throw error;
    }
    return { body, text };
  }

  // -- small helpers -----------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(t) {
    if (t == null) return "—";
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDuration(s) {
    if (s == null) return "—";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(2) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
    return `${Math.floor(m / 60)}h ${pad(m % 60)}m`;
  }
  function elapsed(start, end, running) {
    if (start == null) return null;
    if (end != null) return end - start;
    return running ? Date.now() / 1000 - start : null;
  }
  const title = (s) => s.charAt(0) + s.slice(1).toLowerCase();
  const badge = (status) => h("span", { class: "badge " + status, text: status });
  const wfHref = (id) => "#/workflows/" + encodeURIComponent(id);
  const actorHref = (id) => "#/actors/" + encodeURIComponent(id);
  const json = (value) => JSON.stringify(value, null, 2);
  function shortName(step) {
    // "module.fib_3" made by "module.fib" reads as "fib_3"; names given by the user stay whole.
    const module = step.function.includes(".") ? step.function.slice(0, step.function.lastIndexOf(".")) : "";
    return module && step.name.startsWith(module + ".") ? step.name.slice(module.length + 1) : step.name;
  }
  function problemBox(error) {
    if (error.status === 401) {
      return h("div", { class: "problem" },
        "This dashboard needs its token: open it as ", h("code", { text: location.pathname + "?token=<token>" }), ".");
    }
    return h("div", { class: "problem", text: error.message });
  }

  // -- routing and polling -------------------------------------------------------------------------
  let current = null;

  function setConn(error) {
    const conn = document.getElementById("conn");
    if (error && error.status === undefined) {
      conn.textContent = "not connected: " + error.message;
      conn.className = "conn error";
    } else {
      const now = new Date();
      conn.textContent = `live · ${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}`;
      conn.className = "conn";
    }
  }

  function poller(view) {
    let stopped = false;
    let timer = null;
    let busy = false;
    let again = false;
    async function tick() {
      clearTimeout(timer);
      timer = null;
      if (stopped) return;
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        await view.refresh();
        setConn(null);
      } catch (error) {
        setConn(error);
        if (error.status !== undefined && view.problem) view.problem(error);
      }
      busy = false;
      dash.refreshes += 1;
      if (stopped) return;
      if (again) {
        again = false;
        tick();
      } else {
        timer = setTimeout(tick, POLL_MS);
      }
    }
    tick();
    return {
      now: tick,
      stop() {
        stopped = true;
        clearTimeout(timer);
        if (view.destroy) view.destroy();
      },
    };
  }
  const kick = () => current && current.now();

  function route() {
    if (current) current.stop();
    const path = location.hash.replace(/^#\/?/, "");
    const slash = path.indexOf("/");
    const section = slash < 0 ? path : path.slice(0, slash);
    const id = slash < 0 ? "" : decodeURIComponent(path.slice(slash + 1));
    let view;
    if (section === "workflows" && id) view = workflowView(id);
    else if (section === "actors" && id) view = actorView(id);
    else if (section === "actors") view = actorsView();
    else view = listView();
    dash.view = view.name;
    for (const link of document.querySelectorAll("header.top nav a[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === (section === "actors" ? "actors" : "workflows"));
    }
    document.getElementById("app").replaceChildren(view.el);
    current = poller(view);
  }

  // -- the workflow list ---------------------------------------------------------------------------
  const listState = { status: null, text: "" };

  function listView() {
    const buttons = {};
    const filters = h("div", { class: "filters", id: "filters" });
    for (const status of [null, ...STATUSES]) {
      const count = h("span", { class: "count", text: "0" });
      const button = h("button", {
        type: "button", dataset: { status: status || "ALL" },
        onclick: () => {
          listState.status = status;
          paintFilters();
          kick();
        },
      }, status ? title(status) : "All", count);
      buttons[status || "ALL"] = { button, count };
      filters.append(button);
    }
    const search = h("input", {
      type: "search", id: "text-filter", placeholder: "Filter by id or metadata", value: listState.text,
      oninput: () => {
        listState.text = search.value;
        paintRows();
      },
    });
    const tbody = h("tbody");
    const note = h("p", { class: "note", id: "list-note" });
    const problem = h("div");
    const el = h("section", { id: "list-view" },
      h("div", { class: "toolbar" }, filters, search),
      problem,
      h("div", { class: "table-wrap" },
        h("table", { id: "workflows" },
          h("thead", {}, h("tr", {}, ["Workflow", "Status", "Started", "Ended", "Duration", "Metadata"]
            .map((t) => h("th", { text: t })))),
          tbody)),
      note);
    let data = null;
    let lastText = null;
    let lastPainted = null;

    function paintFilters() {
      for (const [key, { button, count }] of Object.entries(buttons)) {
        button.classList.toggle("active", (listState.status || "ALL") === key);
        if (data) count.textContent = key === "ALL" ? data.total : data.counts[key] || 0;
      }
    }
    function paintRows() {
      if (!data) return;
      const needle = listState.text.trim().toLowerCase();
      const rows = data.workflows.filter((row) =>
        !needle || row.workflow_id.toLowerCase().includes(needle) ||
        JSON.stringify(row.user_metadata).toLowerCase().includes(needle));
      const painted = lastText + "\u0000" + needle;
      if (painted === lastPainted && !rows.some((r) => r.status === "RUNNING")) return;
      lastPainted = painted;
      tbody.replaceChildren(...rows.map((row) => {
        const meta = Object.keys(row.user_metadata || {}).length ? JSON.stringify(row.user_metadata) : "";
        return h("tr", { dataset: { id: row.workflow_id, status: row.status } },
          h("td", { class: "id" }, h("a", { href: wfHref(row.workflow_id), text: row.workflow_id })),
          h("td", {}, badge(row.status)),
          h("td", { class: "time", text: fmtTime(row.start_time) }),
          h("td", { class: "time", text: fmtTime(row.end_time) }),
          h("td", { class: "num", text: fmtDuration(elapsed(row.start_time, row.end_time, row.status === "RUNNING")) }),
          h("td", { class: "meta", title: meta, text: meta }));
      }));
      if (!rows.length) {
        tbody.append(h("tr", {}, h("td", { colspan: 6, class: "empty", text: "No workflows match." })));
      }
      const notes = [];
      if (data.truncated) notes.push(`Showing the newest ${data.workflows.length} of ${data.matched} workflows.`);
      if (needle) notes.push(`${rows.length} of ${data.workflows.length} shown match “${listState.text.trim()}”.`);
      note.textContent = notes.join(" ");
    }

    return {
      name: "workflows",
      el,
      async refresh() {
        const query = listState.status ? "?status=" + encodeURIComponent(listState.status) : "";
        const { body, text } = await api("api/workflows" + query);
        problem.replaceChildren();
        if (text !== lastText) {
          data = body;
          lastText = text;
        }
        paintFilters();
        paintRows();
      },
      problem(error) {
        problem.replaceChildren(problemBox(error));
      },
    };
  }

  // -- the workflow graph --------------------------------------------------------------------------
  function graphElements(steps) {
    const shown = new Set(steps.map((s) => s.index));
    const parentOf = new Map(steps.map((s) => [s.index, s.parent]));
    const elements = [];
    for (const step of steps) {
      const label = shortName(step);
      elements.push({
        group: "nodes",
        data: { id: "s" + step.index, index: step.index, label, width: Math.max(48, label.length * 6.6 + 22) },
        classes: step.status,
      });
    }
    for (const step of steps) {
      for (const dep of step.deps) {
        if (shown.has(dep)) {
          elements.push({ group: "edges", data: { id: `d${dep}-${step.index}`, source: "s" + dep, target: "s" + step.index }, classes: "dep" });
        }
      }
      // A continuation's first steps (those that need none of its others) hang off the step
      // whose continuation made them, so dynamic workflows read as the tree they grew into.
      if (step.parent != null && shown.has(step.parent) &&
          !step.deps.some((d) => parentOf.get(d) === step.parent)) {
        elements.push({
          group: "edges",
          data: { id: `c${step.parent}-${step.index}`, source: "s" + step.parent, target: "s" + step.index },
          classes: "cont",
        });
      }
    }
    return elements;
  }

  function graphStyle() {
    const node = {
      shape: "round-rectangle", width: "data(width)", height: 26, label: "data(label)", color: "#fff",
      "font-size": 11, "font-family": "system-ui, sans-serif", "text-valign": "center", "text-halign": "center",
      "background-color": COLORS.PENDING, "border-width": 0,
    };
    const edge = {
      width: 1.4, "curve-style": "bezier", "line-color": "#b8bfcc", "target-arrow-color": "#b8bfcc",
      "target-arrow-shape": "triangle", "arrow-scale": 0.9,
    };
    return [
      { selector: "node", style: node },
      ...STEP_STATUSES.map((s) => ({ selector: "node." + s, style: { "background-color": COLORS[s] } })),
      { selector: "node.PENDING", style: { color: "#4b5563", "border-width": 1, "border-color": "#9aa3b2" } },
      { selector: "node.RUNNING", style: { "border-width": 3, "border-color": "#a9c9f8" } },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#f5b400" } },
      { selector: "edge", style: edge },
      {
        selector: "edge.cont",
        style: { "line-style": "dashed", "line-color": COLORS.CONTINUED, "target-arrow-color": COLORS.CONTINUED },
      },
    ];
  }

  function makeGraph(container, onSelect) {
    if (typeof window.cytoscape !== "function") {
      container.replaceChildren(h("p", { class: "empty", text: "The graph library did not load." }));
      return null;
    }
    const cy = window.cytoscape({
      container, elements: [], style: graphStyle(), minZoom: 0.05, maxZoom: 2.5,
      boxSelectionEnabled: false, autoungrabify: true,
    });
    cy.on("tap", "node", (event) => onSelect(event.target.data("index")));
    dash.cy = cy;
    let key = null;
    return {
      update(steps) {
        const shape = steps.map((s) => `${s.index}:${s.deps.join(",")}:${s.parent}`).join(";");
        if (shape !== key) {
          key = shape;
          cy.elements().remove();
          cy.add(graphElements(steps));
          cy.layout({ name: "dagre", rankDir: "LR", nodeSep: 14, rankSep: 46, edgeSep: 8, fit: false, animate: false }).run();
          // As tall as the graph needs, within bounds, then fit it in.
          const height = Math.min(460, Math.max(180, cy.elements().boundingBox().h + 48));
          container.style.height = height + "px";
          cy.resize();
          cy.fit(undefined, 18);
          if (cy.zoom() > 1.5) {
            cy.zoom(1.5);
            cy.center();
          } else if (cy.zoom() < 0.7) {
            // Too big to read whole: start readable at its top left; wheel and drag explore it.
            const box = cy.elements().boundingBox();
            cy.zoom(0.7);
            cy.pan({ x: 18 - box.x1 * 0.7, y: 18 - box.y1 * 0.7 });
          }
          dash.layouts += 1;
          return;
        }
        cy.batch(() => {
          for (const step of steps) {
            const node = cy.getElementById("s" + step.index);
            if (!node.hasClass(step.status)) node.classes(step.status);
          }
        });
      },
      destroy() {
        cy.destroy();
        if (dash.cy === cy) dash.cy = null;
      },
    };
  }

  // -- one workflow ----------------------------------------------------------------------------------
  function workflowView(wid) {
    const status = h("span", { id: "wf-status" });
    const message = h("span", { class: "action-msg", id: "action-msg" });
    const resume = h("button", { type: "button", class: "action", id: "resume-btn", disabled: true, onclick: () => act("resume") }, "Resume");
    const cancel = h("button", { type: "button", class: "action danger", id: "cancel-btn", disabled: true, onclick: () => act("cancel") }, "Cancel");
    const facts = h("dl", { class: "facts", id: "facts" });
    const banner = h("div", { class: "error-banner", id: "wf-error", hidden: true });
    const graphBox = h("div", { id: "graph" });
    const graphNote = h("span", { class: "graph-note", id: "graph-note" });
    const legend = h("div", { class: "legend" },
      STEP_STATUSES.map((s) => h("span", {}, h("span", { class: "dot", style: `background:${COLORS[s]};${s === "PENDING" ? "border:1px solid #9aa3b2" : ""}` }), title(s))),
      h("span", {}, h("span", { class: "dash" }), "made by a dynamic step"),
      h("span", { text: "· wheel to zoom, drag to pan, click a step for its row" }),
      graphNote);
    const meta = h("pre", { class: "json", id: "wf-meta" });
    const owner = h("div");
    const tbody = h("tbody");
    const stepsNote = h("p", { class: "note", id: "steps-note" });
    const problem = h("div");
    const el = h("section", { id: "workflow-view" },
      h("div", { class: "crumbs" }, h("a", { href: "#/", text: "Workflows" }), " / ", wid),
      h("div", { class: "wf-head" }, h("h1", { id: "wf-id", text: wid }), status,
        h("div", { class: "actions" }, message, resume, cancel)),
      problem,
      facts,
      banner,
      h("div", { class: "panel graph-panel" }, graphBox, legend),
      h("div", { class: "cols" },
        h("div", {}, h("h2", { text: "Metadata" }), meta),
        owner),
      h("h2", { text: "Steps" }),
      h("div", { class: "table-wrap" },
        h("table", { id: "steps" },
          h("thead", {}, h("tr", {}, ["#", "Step", "Function", "Status", "Attempts", "Started", "Duration", "Error"]
            .map((t) => h("th", { text: t })))),
          tbody)),
      stepsNote);

    let graph = null;
    let lastText = null;
    let data = null;
    let selected = null;
    let acting = false;

    async function act(what) {
      if (what === "cancel" && !window.confirm(`Cancel workflow ${wid}? Its running steps are abandoned.`)) return;
      acting = true;
      resume.disabled = cancel.disabled = true;
      message.className = "action-msg";
      message.textContent = what === "resume" ? "Resuming…" : "Cancelling…";
      try {
        const { body } = await api(`api/workflows/${encodeURIComponent(wid)}/${what}`, "POST");
        message.textContent = (what === "resume" ? "Resumed" : "Cancel requested") + ` (now ${body.status})`;
      } catch (error) {
        message.className = "action-msg error";
        message.textContent = error.message;
      }
      acting = false;
      kick();
    }

    function select(index) {
      selected = index;
      for (const row of tbody.querySelectorAll("tr.highlight")) row.classList.remove("highlight");
      const row = tbody.querySelector(`tr[data-index="${index}"]`);
      if (row) {
        row.classList.add("highlight");
        const details = row.querySelector("details");
        if (details) details.open = true;
        row.scrollIntoView({ block: "nearest" });
      }
    }

    function paintFacts() {
      const counts = STEP_STATUSES.filter((s) => data.step_counts[s])
        .map((s) => h("span", { class: "badge " + s, title: s, text: `${data.step_counts[s]} ${s.toLowerCase()}` }));
      const items = [
        ["Started", fmtTime(data.start_time)],
        ["Ended", fmtTime(data.end_time)],
        ["Duration", fmtDuration(elapsed(data.start_time, data.end_time, data.status === "RUNNING"))],
        ["Steps", h("span", {}, String(data.total_steps), " ", counts.map((c) => [c, " "]))],
      ];
      facts.replaceChildren(...items.map(([k, v]) => h("div", { class: k === "Steps" ? "wide" : null }, h("dt", { text: k }), h("dd", {}, v))));
    }

    function paintSteps() {
      const open = new Set([...tbody.querySelectorAll("details[open]")].map((d) => d.dataset.index));
      const byIndex = new Map(data.steps.map((s) => [s.index, s]));
      const running = data.status === "RUNNING";
      // In the order they ran (steps not started yet last), which reads better than the order
      // they were added in (the last step of a workflow is added first).
      const order = [...data.steps].sort((a, b) =>
        (a.start_time ?? Infinity) - (b.start_time ?? Infinity) || a.index - b.index);
      tbody.replaceChildren(...order.map((step) => {
        const notes = [];
        if (step.continued_by != null) {
          const by = byIndex.get(step.continued_by);
          notes.push("continued by " + (by ? shortName(by) : "#" + step.continued_by));
        }
        if (step.parent != null) {
          const parent = byIndex.get(step.parent);
          notes.push("made by " + (parent ? shortName(parent) : "#" + step.parent));
        }
        const error = step.status === "FAILED" || step.error
          ? h("td", { class: "err" }, h("div", { text: step.error }),
            step.traceback ? h("details", { class: "tb", dataset: { index: step.index }, open: open.has(String(step.index)) },
              h("summary", { text: "Traceback" }), h("pre", { text: step.traceback })) : null)
          : h("td", {});
        return h("tr", { dataset: { index: step.index, status: step.status }, class: step.index === selected ? "highlight" : null },
          h("td", { class: "num", text: step.index }),
          h("td", {}, h("div", { class: "step-name", text: step.name }), notes.length ? h("div", { class: "note", text: notes.join(" · ") }) : null),
          h("td", { class: "fn", text: step.function }),
          h("td", {}, badge(step.status)),
          h("td", { class: "num", text: step.attempts }),
          h("td", { class: "time", text: fmtTime(step.start_time) }),
          h("td", { class: "num", text: fmtDuration(elapsed(step.start_time, step.end_time, running && step.status === "RUNNING")) }),
          error);
      }));
      const cut = data.truncated ? `Showing the first ${data.steps.length} of ${data.total_steps} steps.` : "";
      stepsNote.textContent = cut;
      graphNote.textContent = cut;
    }

    function paint() {
      status.replaceChildren(badge(data.status));
      if (!acting) {
        resume.disabled = !data.can_resume;
        cancel.disabled = !data.can_cancel;
      }
      paintFacts();
      if (data.error) {
        banner.hidden = false;
        banner.replaceChildren(`Step ${data.failed_step} failed: ${data.error} `,
          h("a", { href: "#", onclick: (e) => {
            e.preventDefault();
            const failed = data.steps.find((s) => s.status === "FAILED");
            if (failed) select(failed.index);
          } }, "(traceback)"));
      } else {
        banner.hidden = true;
      }
      const userMeta = data.user_metadata || {};
      meta.textContent = Object.keys(userMeta).length ? json(userMeta) : "(none)";
      owner.replaceChildren(...(data.owned_by ? [h("h2", { text: "Run by" }), h("pre", { class: "json", text: json(data.owned_by) })] : []));
      if (graph === null) graph = makeGraph(graphBox, select) || false;
      if (graph) graph.update(data.steps);
      paintSteps();
    }

    return {
      name: "workflow",
      el,
      async refresh() {
        const { body, text } = await api("api/workflows/" + encodeURIComponent(wid));
        problem.replaceChildren();
        if (text === lastText) {
          if (data.status === "RUNNING") paintFacts();
          return;
        }
        lastText = text;
        data = body;
        paint();
      },
      problem(error) {
        problem.replaceChildren(problemBox(error));
      },
      destroy() {
        if (graph) graph.destroy();
      },
    };
  }

  // -- actors ----------------------------------------------------------------------------------------
  function actorsView() {
    const tbody = h("tbody");
    const problem = h("div");
    const el = h("section", { id: "actors-view" },
      h("h2", { text: "Actors" }),
      problem,
      h("div", { class: "table-wrap" },
        h("table", { id: "actors" },
          h("thead", {}, h("tr", {}, ["Actor", "Class", "Status", "Calls", "Failed", "Queued", "Last call"]
            .map((t) => h("th", { text: t })))),
          tbody)));
    let lastText = null;
    return {
      name: "actors",
      el,
      async refresh() {
        const { body, text } = await api("api/actors");
        problem.replaceChildren();
        if (text === lastText) return;
        lastText = text;
        tbody.replaceChildren(...body.actors.map((a) => {
          const stats = a.stats || {};
          return h("tr", { dataset: { id: a.actor_id } },
            h("td", { class: "id" }, h("a", { href: actorHref(a.actor_id), text: a.actor_id })),
            a.error ? h("td", { class: "err", colspan: 6, text: a.error }) : [
              h("td", { class: "id", text: a.class || "" }),
              h("td", {}, badge(a.status)),
              h("td", { class: "num", text: stats.calls }),
              h("td", { class: "num", text: stats.failed }),
              h("td", { class: "num", text: stats.queued }),
              h("td", { class: "time", text: fmtTime(stats.last_call_time) }),
            ]);
        }));
        if (!body.actors.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "empty", text: "No actors in this storage." })));
      },
      problem(error) {
        problem.replaceChildren(problemBox(error));
      },
    };
  }

  function actorView(actorId) {
    const status = h("span", { id: "actor-status" });
    const facts = h("dl", { class: "facts" });
    const state = h("pre", { class: "json", id: "actor-state" });
    const tbody = h("tbody");
    const note = h("p", { class: "note", id: "calls-note" });
    const problem = h("div");
    const el = h("section", { id: "actor-view" },
      h("div", { class: "crumbs" }, h("a", { href: "#/actors", text: "Actors" }), " / ", actorId),
      h("div", { class: "wf-head" }, h("h1", { id: "actor-id", text: actorId }), status),
      problem,
      facts,
      h("h2", { text: "State" }),
      state,
      h("h2", { text: "Calls" }),
      h("div", { class: "table-wrap" },
        h("table", { id: "calls" },
          h("thead", {}, h("tr", {}, ["Seq", "Method", "Status", "Submitted", "Started", "Duration", "Error", "Workflow"]
            .map((t) => h("th", { text: t })))),
          tbody)),
      note);
    let lastText = null;
    return {
      name: "actor",
      el,
      async refresh() {
        const { body, text } = await api("api/actors/" + encodeURIComponent(actorId));
        problem.replaceChildren();
        if (text === lastText) return;
        lastText = text;
        status.replaceChildren(body.status ? badge(body.status) : "");
        const stats = body.stats || {};
        facts.replaceChildren(...[
          ["Class", body.class || "—"],
          ["Created", fmtTime(stats.created)],
          ["Calls", stats.calls ?? "—"],
          ["Failed", stats.failed ?? "—"],
          ["Queued", stats.queued ?? "—"],
          ["Last call", fmtTime(stats.last_call_time)],
        ].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
        state.textContent = body.state_error || json(body.state);
        tbody.replaceChildren(...body.calls.map((c) => h("tr", { dataset: { seq: c.seq ?? "", status: c.status } },
          h("td", { class: "num", text: c.seq ?? "—" }),
          h("td", { class: "id", text: c.method }),
          h("td", {}, badge(c.status)),
          h("td", { class: "time", text: fmtTime(c.submitted) }),
          h("td", { class: "time", text: fmtTime(c.start_time) }),
          h("td", { class: "num", text: fmtDuration(elapsed(c.start_time, c.end_time, false)) }),
          h("td", { class: "err", text: c.error || "" }),
          h("td", { class: "id" }, c.workflow_id ? h("a", { href: wfHref(c.workflow_id), text: c.workflow_id }) : ""))));
        if (!body.calls.length) tbody.append(h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No calls yet." })));
        const notes = [];
        if (body.truncated) notes.push(`Showing the last ${body.calls.length} of ${body.total_calls} calls.`);
        if (body.calls_error) notes.push(body.calls_error);
        note.textContent = notes.join(" ");
      },
      problem(error) {
        problem.replaceChildren(problemBox(error));
      },
    };
  }

  window.addEventListener("hashchange", route);
  route();
})();
