"use strict";
// Polls /status and redraws; rates (tokens/s, step time) come from two polls in a row.
const REFRESH_MS = 1000;
const KEY_ITEM = "refserver-api-key";
let previous = null;

function $(id) { return document.getElementById(id); }

async function refresh() {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? { Authorization: "Bearer " + key } : {};
  try {
    const response = await fetch("/status", { headers, cache: "no-store" });
    if (response.status === 401) {
      askForKey(key ? "That API key was refused; enter another." : null);
      return;
    }
    const status = await response.json();
    if (!response.ok) throw new Error(status.error ? status.error.message : response.statusText);
    $("auth").hidden = true;
    $("error").textContent = "";
    render(status);
    previous = status;
  } catch (error) {
    $("error").textContent = "The server did not answer: " + error.message;
    $("health").textContent = "unreachable";
    $("health").className = "badge down";
  }
}

function askForKey(message) {
  $("auth").hidden = false;
  if (message) $("auth-message").textContent = message;
  $("health").textContent = "API key required";
  $("health").className = "badge";
}

function render(status) {
  $("model").textContent = status.model;
  $("health").textContent = status.ok ? "healthy" : status.reason || "not ready";
  $("health").className = "badge " + (status.ok ? "ok" : "down");
  $("running").textContent = status.requests.running;
  $("waiting").textContent = status.requests.waiting;
  $("generated").textContent = status.generated_tokens;
  $("tokens-per-second").textContent = tokensPerSecond(status);
  $("kv").textContent = status.kv
    ? `${status.kv.used_tokens} of ${status.kv.capacity_tokens} tokens`
    : "–";
  $("loading").replaceChildren(...(status.loading || []).map(loadingItem));
  const before = new Map((previous ? previous.ranks : []).map((rank) => [rank.rank, rank]));
  $("ranks").tBodies[0].replaceChildren(...status.ranks.map((rank) => row(rank, before.get(rank.rank))));
}

function loadingItem(rank) {
  const li = document.createElement("li");
  const left = rank.seconds_left == null ? "" : `, about ${Math.round(rank.seconds_left)} s left`;
  li.textContent = `rank ${rank.rank}: loaded ${rank.layers_done} of ${rank.layers_total} ` +
    `layers, ${bytes(rank.bytes_done)} of ${bytes(rank.bytes_total)}${left}`;
  return li;
}

function tokensPerSecond(status) {
  if (!previous || status.time <= previous.time) return "–";
  const rate = (status.generated_tokens - previous.generated_tokens) / (status.time - previous.time);
  return rate.toFixed(1);
}

function row(rank, before) {
  const tr = document.createElement("tr");
  const layers = `${rank.layers[0]}–${rank.layers[1]}` +
    (rank.embedding ? " + embedding" : "") + (rank.head ? " + head" : "");
  const kv = rank.kv_budget_bytes == null ? "–"
    : `${bytes(rank.kv_used_bytes)} / ${bytes(rank.kv_budget_bytes)}`;
  const cells = [`rank ${rank.rank}`, rank.host, layers, bytes(rank.memory_bytes), kv,
    stepTime(rank, before), ringWait(rank, before), liveness(rank)];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  if (!rank.alive) tr.lastChild.className = "silent";
  return tr;
}

function stepTime(rank, before) {
  if (!before || rank.steps <= before.steps) return "idle";
  const seconds = (rank.step_seconds - before.step_seconds) / (rank.steps - before.steps);
  return (seconds * 1000).toFixed(1) + " ms";
}

// The share of the rank's step time spent waiting for its neighbour's data.
function ringWait(rank, before) {
  if (!before || rank.step_seconds <= before.step_seconds) return "–";
  const share = (rank.ring_wait_seconds - before.ring_wait_seconds) /
    (rank.step_seconds - before.step_seconds);
  return Math.round(100 * Math.min(1, Math.max(0, share))) + " %";
}

function liveness(rank) {
  if (rank.heartbeat_age_seconds == null) return rank.alive ? "serving" : "lost";
  const age = rank.heartbeat_age_seconds.toFixed(1) + " s ago";
  return (rank.alive ? "heard " : "silent, heard ") + age;
}

function bytes(value) {
  if (value == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return value.toFixed(unit ? 1 : 0) + " " + units[unit];
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("api-key").value.trim());
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
