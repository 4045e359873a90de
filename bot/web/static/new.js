// The new-session form: sends the prompt (and the chosen repository, if any); when the agent
// cannot tell the repository it asks, and the answer starts the session. Typing warms a sandbox.
"use strict";
(function () {
  const requestToken = document.querySelector('meta[name="request-token"]').content;
  const $ = (id) => document.getElementById(id);
  let held = null;
  let warmed = "";

  async function post(path, body) {
    const error = $("form-error");
    error.hidden = true;
    let answer;
    try {
      const response = await fetch(path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Request-Token": requestToken },
        body: JSON.stringify(body),
      });
      answer = await response.json().catch(() => ({ ok: false, error: "The server answered " + response.status + "." }));
    } catch (e) {
      answer = { ok: false, error: "Could not reach the server; check your connection and try again." };
    }
    if (!answer.ok) { error.textContent = answer.error; error.hidden = false; }
    return answer;
  }

  function follow(answer) {
    if (answer.url) { location.assign(answer.url); return; }
    if (answer.held) {
      held = answer.held;
      const select = $("pick-repo");
      select.replaceChildren();
      const names = answer.likely.concat(answer.repos.filter((r) => !answer.likely.includes(r)));
      for (const name of names) { const o = document.createElement("option"); o.value = name; o.textContent = name; select.appendChild(o); }
      $("pick-question").textContent = "Which repository is this about? (The question stays open for " + answer.minutes + " minutes.)";
      $("pick-form").hidden = false;
    }
  }

  $("new-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text) return;
    $("send").disabled = true;
    const answer = await post("/new", { text: text, repo: $("repo").value });
    $("send").disabled = false;
    if (answer.ok) follow(answer);
  });
  $("pick-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const answer = await post("/new/pick", { held: held, repo: $("pick-repo").value });
    if (answer.ok) follow(answer);
  });
  $("prompt").addEventListener("input", () => {
    const repo = $("repo").value;
    if (!repo || repo === warmed) return;
    warmed = repo;
    post("/new/typing", { repo: repo });
  });
})();
