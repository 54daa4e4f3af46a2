"""The web page ``editkit serve`` answers at ``/``: the edit journal (who, when, what) with rollback buttons, a form
to add an edit, and an ask box that shows the routing explanation. Plain HTML and script over the JSON API; user
text is only ever set as ``textContent``. Kept in a module (not a data file) so it ships with the code."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>editkit</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
  input[type=text], input[type=password] { width: 24rem; padding: 0.3rem; }
  table { border-collapse: collapse; width: 100%; }
  td, th { border-bottom: 1px solid #ddd; padding: 0.3rem; text-align: left; }
  #answer { font-size: 1.2rem; font-weight: bold; } #routing, #status { color: #555; } .error { color: #b00; }
</style>
</head>
<body>
<h1>editkit <span id="model"></span></h1>
<p id="status"></p>

<h2>Ask</h2>
<form id="ask-form">
  <input id="ask-input" type="text" placeholder="The capital of Germany is" required>
  <button id="ask-button" type="submit">Ask</button>
</form>
<p id="answer"></p>
<p id="routing"></p>

<h2>Add an edit</h2>
<form id="edit-form">
  <p><input id="edit-prompt" type="text" placeholder="prompt: The capital of Germany is" required></p>
  <p><input id="edit-target" type="text" placeholder="new answer: Bonn" required></p>
  <p><input id="token" type="password" placeholder="write token (ek_...)" autocomplete="off"></p>
  <button id="edit-button" type="submit">Add edit</button>
</form>

<h2>Journal</h2>
<table>
  <thead><tr><th>id</th><th>who</th><th>when</th><th>what</th><th></th></tr></thead>
  <tbody id="journal"></tbody>
</table>

<script>
"use strict";
let model = "";
const $ = (id) => document.getElementById(id);

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function call(method, path, body, write) {
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const response = await fetch(path, { method, headers, body: payload });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

function explain(e) {
  if (e.answered_by === "edit") {
    return "answered by edit " + e.edit_id + " (scope score " + e.scope_score.toFixed(3) + ")";
  }
  if (e.answered_by === "base") {
    return "answered by the base model (best scope score " + e.best_scope_score.toFixed(3) + ")";
  }
  return "answered by the edited weights (edits " + (e.handles || []).join(", ") + ")";
}

async function journal() {
  const data = await call("GET", "/v1/edits?limit=500");
  const body = $("journal");
  body.replaceChildren();
  for (const e of data.data) {
    const row = document.createElement("tr");
    row.dataset.id = e.id;
    const when = e.created ? new Date(e.created * 1000).toLocaleString() : "";
    for (const text of [e.id, e.author || "-", when, e.text ? e.text + " \u2192" + e.target_new : e.descriptor]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    const button = document.createElement("button");
    button.textContent = "Roll back";
    button.className = "rollback";
    button.onclick = async () => {
      try { await call("DELETE", "/v1/edits/" + e.id); say("rolled back edit " + e.id); await journal(); }
      catch (err) { say(err.message, true); }
    };
    const cell = document.createElement("td");
    cell.appendChild(button);
    row.appendChild(cell);
    body.appendChild(row);
  }
}

$("ask-form").onsubmit = async (event) => {
  event.preventDefault();
  try {
    const data = await call("POST", "/v1/completions", { model, prompt: $("ask-input").value, max_tokens: 8 });
    const choice = data.choices[0];
    $("answer").textContent = choice.text;
    $("routing").textContent = explain(choice.editkit);
  } catch (err) { say(err.message, true); }
};

$("edit-form").onsubmit = async (event) => {
  event.preventDefault();
  try {
    const edit = { prompt: $("edit-prompt").value, target_new: $("edit-target").value };
    const e = await call("POST", "/v1/edits", edit);
    say((e.status === "duplicate" ? "already there: edit " : "added edit ") + e.id);
    await journal();
  } catch (err) { say(err.message, true); }
};

(async () => {
  try {
    const health = await call("GET", "/healthz");
    model = health.model;
    $("model").textContent = "\u2014 " + health.model + " with " + health.method;
    await journal();
  } catch (err) { say(err.message, true); }
})();
</script>
</body>
</html>
"""
