// The live session page: applies the session's events as they arrive over the WebSocket and
// resumes from the last sequence number it has after any disconnect (no gap, no duplicate).
// Text from people, tools and the model goes in as text (textContent); the only HTML inserted is
// the server's rendering of finished Markdown, which cannot contain markup of its own.
"use strict";
(function () {
  const root = document.getElementById("session");
  if (!root) return;
  const token = root.dataset.token;
  const requestToken = document.querySelector('meta[name="request-token"]').content;
  let lastSeq = Number(root.dataset.lastSeq) || 0;
  let socket = null;
  let retry = 500;
  let lastTyping = 0;
  const ORIGINS = { web: "web", slack_thread: "Slack", slack_dm: "Slack", app_home: "Slack", shortcut: "Slack",
                    parent_session: "a parent session", github: "GitHub" };
  const $ = (id) => document.getElementById(id);

  function text(el, value) { el.textContent = value == null ? "" : String(value); return el; }
  function make(tag, cls, value) { const el = document.createElement(tag); if (cls) el.className = cls; if (value != null) text(el, value); return el; }
  function nearBottom() { return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80; }

  function turnEl(id) { return document.querySelector('#turns .turn[data-turn="' + id + '"]'); }

  // Each entry of the trace has the anchor `e<seq>` of the event that made it (as the server renders
  // it), so a link to `#e<seq>` from Slack lands on it, highlighted by :target.
  function anchor(el, seq) { if (seq != null) el.id = "e" + seq; return el; }

  function newTurn(d, seq) {
    const existing = turnEl(d.prompt_id);
    if (existing) return existing;
    const el = $("turn-template").content.firstElementChild.cloneNode(true);
    el.id = "turn-" + d.prompt_id;
    el.dataset.turn = d.prompt_id;
    text(el.querySelector(".author"), d.author.name || d.author.id);
    text(el.querySelector(".via"), "from " + (ORIGINS[d.author.origin] || d.author.origin || "Slack"));
    anchor(text(el.querySelector(".prompt"), d.text), seq);
    const none = $("no-turns"); if (none) none.remove();
    $("turns").appendChild(el);
    return el;
  }

  const usage = new Map();  // turn → summed model usage, from model_call events

  function addUsage(turn, d) {
    const u = usage.get(turn) || { tokens: 0, cost: 0, priced: true, estimated: false };
    u.tokens += (d.prompt_tokens || 0) + (d.completion_tokens || 0);
    if (d.cost_usd == null) u.priced = false; else u.cost += d.cost_usd;
    u.estimated = u.estimated || !!d.estimated;
    usage.set(turn, u);
  }

  function setOutcome(el, d, seq) {
    const out = anchor(el.querySelector(".outcome"), seq);
    const cut = Array.from(el.querySelectorAll(".tool")).find((t) => text_of(t.querySelector(".state")) === "running…");
    let label;
    if (d.outcome === "done") label = "Done" + (d.duration_ms != null ? " in " + (d.duration_ms / 1000).toFixed(1) + " s" : "");
    else if (d.outcome === "stopped") label = "Stopped" + (d.by ? " by " + d.by : "");
    else label = d.error || "This turn failed.";
    const u = usage.get(Number(el.dataset.turn));
    if (u) label += " · " + (u.estimated ? "~" : "") + u.tokens.toLocaleString("en-US") + " tokens"
      + (u.priced ? " · $" + u.cost.toFixed(4) : "");
    out.className = "outcome outcome-" + d.outcome;
    text(out, label);
    if (cut && cut.id && (d.outcome === "error" || d.outcome === "interrupted")) {
      const where = make("a", "where", "where it failed");
      where.href = "#" + cut.id;
      out.append(" ", where);
    }
    el.classList.remove("running");
    el.querySelectorAll(".tool .state").forEach((s) => { if (s.textContent === "running…") text(s, "not finished"); });
  }

  function queueItem(d) {
    if (document.querySelector('#queue li[data-prompt="' + d.prompt_id + '"]')) return;
    const li = make("li");
    li.dataset.prompt = d.prompt_id;
    li.append(make("span", "author", d.author.name || d.author.id), ": ", make("span", "text", d.text));
    $("queue").appendChild(li);
    $("queue-box").hidden = false;
  }

  function dropQueued(id) {
    const li = document.querySelector('#queue li[data-prompt="' + id + '"]');
    if (li) li.remove();
    $("queue-box").hidden = !$("queue").children.length;
  }

  function clearQueue() { $("queue").replaceChildren(); $("queue-box").hidden = true; }

  function running() { return document.querySelector("#turns .turn.running") !== null; }

  function showStop() { const stop = $("stop"); if (stop) stop.hidden = !running(); }

  function apply(item) {
    const d = item.data;
    const el = item.turn != null ? turnEl(item.turn) : null;
    switch (item.kind) {
      case "prompt_queued": queueItem(d); break;
      case "turn_started": dropQueued(d.prompt_id); newTurn(d, item.seq); break;
      case "text_delta": if (el) el.querySelector(".live").append(d.text); break;
      case "assistant_message":
        if (el) {
          if (item.html) el.querySelector(".settled").insertAdjacentHTML("beforeend", item.html);
          text(el.querySelector(".live"), "");
        }
        break;
      case "tool_call":
        if (el) {
          const t = anchor(make("details", "tool"), item.seq);
          t.dataset.id = d.id;
          const summary = make("summary");
          summary.append(make("code", "name", d.name), " ", make("span", "state", "running…"));
          t.append(summary, make("pre", "args", pretty(d.arguments)), make("pre", "output", ""));
          el.querySelector(".tools").appendChild(t);
        }
        break;
      case "tool_result":
        if (el) {
          const tools = el.querySelectorAll(".tool");
          for (let i = tools.length - 1; i >= 0; i--) {
            if (tools[i].dataset.id === d.id) {
              text(tools[i].querySelector(".state"), d.ok ? "ok" : "failed");
              text(tools[i].querySelector(".output"), d.output);
              break;
            }
          }
        }
        break;
      case "file_changed":
        if (el) {
          let f = Array.from(el.querySelectorAll(".file")).find((x) => x.dataset.path === d.path);
          if (!f) {
            f = make("details", "file");
            f.dataset.path = d.path;
            const summary = make("summary");
            summary.append(make("code", null, d.path), " ", make("span", "action", d.action));
            f.append(summary, make("pre", "diff", ""));
            el.querySelector(".files").appendChild(f);
          }
          text(f.querySelector(".action"), d.action);
          if (d.diff != null) text(f.querySelector(".diff"), d.diff);
        }
        break;
      case "note": if (el) el.querySelector(".notes").appendChild(anchor(make("li", null, d.text), item.seq)); break;
      case "model_call": addUsage(item.turn, d); break;
      case "turn_ended": if (el) setOutcome(el, d, item.seq); break;
      case "queue_changed": if (d.cleared) clearQueue(); break;
      case "status":
        text($("state"), d.state);
        $("state").className = "state-" + d.state;
        if (d.state === "idle") clearQueue();
        break;
      case "sandbox_ready": text($("sandbox"), "sandbox from " + d.source); break;
      case "git_synced": text($("branch"), "· branch " + d.branch); break;
      case "error": $("errors").appendChild(make("li", null, d.message)); break;
      case "egress": egress(d); break;
      case "pull_request": pullRequest(d); break;
      case "child_session": child(d); break;
      default: break;
    }
  }

  function egress(d) {
    const key = d.host + ":" + d.port;
    let li = document.querySelector('#egress-list li[data-key="' + CSS.escape(key) + '"]');
    if (!li) { li = make("li"); li.dataset.key = key; li.dataset.count = "0"; $("egress-list").appendChild(li); }
    li.dataset.count = String(Number(li.dataset.count || "0") + 1);
    text(li, key + ": " + (d.allowed ? "allowed" : "refused") + " · " + li.dataset.count + " connection(s)" + (d.reason ? " · " + d.reason : ""));
    $("egress").hidden = false;
  }

  function pullRequest(d) {
    const link = $("pr-link");
    link.href = d.url;
    text(link, "PR #" + d.number);
    const state = { merged: "merged", closed: "closed", reopened: "open", opened: "open" }[d.action];
    if (state) text($("pr-state"), state);
    $("pr").hidden = false;
    const button = $("create-pr");
    if (button) text(button, "Push to PR");
  }

  // A sub-session's line: fields an event leaves out keep their value (the server's ChildView).
  function child(d) {
    let li = document.querySelector('#children li[data-child="' + CSS.escape(d.child_id) + '"]');
    if (!li) {
      li = make("li");
      li.dataset.child = d.child_id;
      li.dataset.state = "working";
      const link = make("a", "title");
      li.append(link, " · ", make("span", "repo"), " · ", make("span", "status"), make("span", "pr"));
      $("children").appendChild(li);
    }
    for (const key of ["share_token", "title", "repo", "state", "pr_number", "pr_url", "pr_state"]) {
      if (d[key] != null) li.dataset[key] = String(d[key]);
    }
    if (d.outcome != null) { li.dataset.outcome = d.outcome; li.dataset.error = d.error || ""; }
    const link = li.querySelector(".title");
    if (li.dataset.share_token) link.href = "/s/" + li.dataset.share_token;
    text(link, li.dataset.title || "Session " + d.child_id);
    text(li.querySelector(".repo"), li.dataset.repo || "no repository");
    let status = li.dataset.state === "working" ? "working" : ({ error: "failed" }[li.dataset.outcome] || li.dataset.outcome || "idle");
    const state = li.querySelector(".status");
    state.className = "status status-" + status;
    if (status === "failed" && li.dataset.error) status += ": " + li.dataset.error;
    text(state, status);
    const pr = li.querySelector(".pr");
    pr.replaceChildren();
    if (li.dataset.pr_url) {
      const a = make("a", null, "PR #" + li.dataset.pr_number);
      if (/^https?:\/\//.test(li.dataset.pr_url)) a.href = li.dataset.pr_url;
      a.rel = "noopener noreferrer"; a.target = "_blank";
      pr.append(" · ", a);
      if (li.dataset.pr_state && li.dataset.pr_state !== "open") pr.append(" " + li.dataset.pr_state);
    }
    $("children-box").hidden = false;
  }

  function text_of(el) { return el ? el.textContent : ""; }

  // A link to a tool's entry opens it.
  function openTarget() {
    const m = /^#(e\d+)$/.exec(location.hash);
    const target = m ? document.getElementById(m[1]) : null;
    if (target && target.tagName === "DETAILS") target.open = true;
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();

  function pretty(args) {
    try { return JSON.stringify(JSON.parse(args), null, 2); } catch (e) { return args || ""; }
  }

  function presence(p) {
    const parts = [];
    if (p.names.length) parts.push(p.names.join(", "));
    if (p.anonymous) parts.push(p.anonymous + " anonymous");
    text($("presence"), "Watching: " + (parts.join(" and ") || "nobody"));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(scheme + "//" + location.host + "/s/" + token + "/ws?after=" + lastSeq);
    socket.onopen = () => { retry = 500; text($("conn"), "live"); $("conn").className = "conn live"; };
    socket.onmessage = (message) => {
      const stick = nearBottom();
      for (const item of JSON.parse(message.data)) {
        if (item.type === "presence") { presence(item); continue; }
        if (item.seq <= lastSeq) continue;  // already shown (replays are idempotent)
        try { apply(item); } catch (e) { console.error("could not show event", item.seq, e); }
        lastSeq = item.seq;
      }
      root.dataset.lastSeq = String(lastSeq);
      showStop();
      if (stick) window.scrollTo(0, document.body.scrollHeight);
    };
    socket.onclose = () => {
      text($("conn"), "reconnecting…"); $("conn").className = "conn down";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  async function post(path, body) {
    const error = $("form-error");
    if (error) error.hidden = true;
    let answer;
    try {
      const response = await fetch("/s/" + token + path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Request-Token": requestToken },
        body: JSON.stringify(body || {}),
      });
      answer = await response.json().catch(() => ({ ok: false, error: "The server answered " + response.status + "." }));
    } catch (e) {
      answer = { ok: false, error: "Could not reach the server; check your connection and try again." };
    }
    if (!answer.ok && error) { text(error, answer.error); error.hidden = false; }
    return answer;
  }

  const form = $("prompt-form");
  if (form) {
    const box = $("prompt");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const value = box.value.trim();
      if (!value) return;
      $("send").disabled = true;
      const answer = await post("/prompt", { text: value });
      $("send").disabled = false;
      if (answer.ok) box.value = "";
    });
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.metaKey || e.ctrlKey)) { e.preventDefault(); form.requestSubmit(); }
    });
    box.addEventListener("input", () => {
      const now = Date.now();
      if (now - lastTyping < 20000 || !socket || socket.readyState !== WebSocket.OPEN) return;
      lastTyping = now;
      socket.send(JSON.stringify({ type: "typing" }));
    });
    $("stop").addEventListener("click", () => post("/stop"));
  }
  const createPr = $("create-pr");
  if (createPr) createPr.addEventListener("click", async () => {
    createPr.disabled = true;
    const answer = await post("/pull-request");
    createPr.disabled = false;
    if (answer.reason === "not_linked") {
      const error = $("form-error");
      const connect = make("a", null, "Connect GitHub");
      connect.href = answer.connect;
      const asApp = make("button", "secondary", "Open as the App");
      asApp.type = "button";
      asApp.addEventListener("click", async () => { asApp.disabled = true; await post("/pull-request?as_app=1"); });
      error.append(" ", connect, " ", asApp);
    }
  });
  const clear = $("clear-queue");
  if (clear) clear.addEventListener("click", () => post("/clear"));
  connect();
})();
