// alknet-firewall console: polls api/stats and api/recent, and runs the try-a-message box.
// Vanilla JavaScript, no dependencies; every text from the server goes in via textContent.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const LEVELS = ["notice", "warning", "critical"];
  const $ = (id) => document.getElementById(id);
  let stats = null;
  let timer = null;
  let policiesFilled = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt = (v, digits) =>
    v === null || v === undefined ? "–" : typeof v === "number" && digits !== undefined ? v.toFixed(digits) : String(v);
  const ms = (v) => (v === null || v === undefined ? "–" : v >= 100 ? Math.round(v).toString() : v.toFixed(1));
  const count = (obj, key) => (obj && obj[key]) || 0;
  const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

  async function api(path, options) {
    const resp = await fetch(path, Object.assign({ credentials: "same-origin", headers: { accept: "application/json" } }, options || {}));
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const msg = body && body.error ? body.error.message : resp.status + " " + resp.statusText;
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function setStatus(ok, text) {
    $("live-dot").className = "dot " + (ok ? "ok" : "bad");
    $("live-status").textContent = text;
  }

  // -- live view -----------------------------------------------------------------------------
  function fillRows(tbody, keys, windows, total, badge) {
    tbody.replaceChildren();
    if (!keys.length) {
      tbody.append(el("tr", {}, el("td", { class: "empty", colspan: 4, text: "none yet" })));
      return;
    }
    for (const k of keys) {
      const name = badge ? el("span", { class: "badge " + k, text: k }) : k;
      tbody.append(
        el("tr", {},
          el("th", { scope: "row" }, name),
          el("td", { class: "num", text: count(windows["5m"], k) }),
          el("td", { class: "num", text: count(windows["1h"], k) }),
          el("td", { class: "num", text: count(total, k) })));
    }
  }

  function keysOf(...objs) {
    const s = new Set();
    for (const o of objs) for (const k of Object.keys(o || {})) s.add(k);
    return [...s].sort();
  }

  function renderStats(s) {
    stats = s;
    const w5 = s.windows["5m"], w1 = s.windows["1h"], tot = s.total;
    const m = s.model;
    $("identity").textContent =
      `${m.name} · ${m.backend} backend · ${m.device || "?"} ${m.dtype || ""} · layers ${(m.layers || []).join(",")} · codebook ${s.codebook.id}`;
    $("codebook-id").textContent = "· codebook " + s.codebook.id;
    $("model-line").textContent = `Up ${Math.round(s.uptime_s)} s; recent list keeps ${s.recent_capacity} verdicts in memory` +
      (s.log_text ? " with their text (log_text on)." : ", never their text.");
    document.querySelector("form.logout").hidden = !s.auth;

    $("c-verdicts").textContent = w5.verdicts;
    $("c-verdicts-sub").textContent = `${w1.verdicts} in the last hour · ${tot.verdicts} since start`;
    $("c-blocked").textContent = count(w5.by_action, "block");
    $("c-blocked-sub").textContent = `${count(w5.by_action, "flag")} flagged · ${count(w1.by_action, "block")} blocked in 1 h`;
    $("c-latency").textContent = w5.latency_ms.p50 === null ? "–" : `${ms(w5.latency_ms.p50)} / ${ms(w5.latency_ms.p99)}`;
    $("c-latency-sub").textContent = w5.latency_ms.p50 === null ? "ms · no verdicts yet" :
      `ms · 1 h: ${ms(w1.latency_ms.p50)} / ${ms(w1.latency_ms.p99)} · ${w5.latency_ms.count} screened`;
    $("c-queue").textContent = s.queue_depth;
    $("c-queue-sub").textContent = `${s.pool.workers} worker(s) · queue ${s.pool.queue_size} · rejected ${s.pool.rejected}`;
    $("c-batch").textContent = w5.mean_batch_size === null ? "–" : fmt(w5.mean_batch_size, 2);
    $("c-batch-sub").textContent = `${w5.batches} batches · max ${s.pool.max_batch_items} of ${s.pool.max_batch_size}`;
    const e5 = sum(w5.errors);
    $("c-errors").textContent = e5;
    $("c-errors").className = "big" + (e5 ? " block-text" : "");
    $("c-errors-sub").textContent = `${sum(w1.errors)} in 1 h · ${sum(tot.errors)} since start`;

    const actions = keysOf({ allow: 1, flag: 1, block: 1 }, w1.by_action, tot.by_action);
    fillRows($("t-action").tBodies[0], actions, { "5m": w5.by_action, "1h": w1.by_action }, tot.by_action, true);
    const signals = keysOf(w1.by_signal, tot.by_signal);
    fillRows($("t-signal").tBodies[0], signals, { "5m": w5.by_signal, "1h": w1.by_signal }, tot.by_signal, false);
    const codes = keysOf(w1.errors, tot.errors);
    fillRows($("t-errors").tBodies[0], codes, { "5m": w5.errors, "1h": w1.errors }, tot.errors, false);

    const pt = $("t-policies").tBodies[0];
    pt.replaceChildren();
    for (const [name, p] of Object.entries(s.policies)) {
      const mode = (p.monitor ? "monitor" : "enforce") + ` · fail ${p.fail_mode}`;
      pt.append(
        el("tr", {},
          el("th", { scope: "row" }, name, name === s.default_policy ? el("span", { class: "muted", text: " (default)" }) : null),
          ...LEVELS.map((l) => el("td", { class: "num", text: fmt(p.thresholds[l], 3) })),
          el("td", { text: mode })));
    }
    if (!policiesFilled) {
      const sel = $("try-policy");
      for (const name of Object.keys(s.policies)) {
        sel.append(el("option", { value: name, selected: name === s.default_policy }, name));
      }
      policiesFilled = true;
    }
  }

  function renderRecent(r) {
    const tbody = $("t-recent").tBodies[0];
    tbody.replaceChildren();
    $("recent-note").textContent = r.log_text ? "(with text: log_text is on)" : "(message text is never kept; digest = salted BLAKE2b)";
    if (!r.recent.length) {
      tbody.append(el("tr", {}, el("td", { class: "empty", colspan: 10, text: "no verdicts yet" })));
      return;
    }
    for (const v of r.recent) {
      const t = new Date(v.time * 1000);
      const row = el("tr", {},
        el("td", { text: t.toLocaleTimeString([], { hour12: false }) }),
        el("td", {}, el("span", { class: "tag " + v.source, text: v.source })),
        el("td", { text: v.policy }),
        el("td", {}, el("span", { class: "badge " + v.action, text: v.action })),
        el("td", { text: v.level }),
        el("td", { text: v.error_code ? "error: " + v.error_code : v.signal || "–" }),
        el("td", { class: "num", text: fmt(v.score, 3) }),
        el("td", { class: "num", text: v.chars }),
        el("td", { class: "num", text: fmt(v.latency_ms, 1) }),
        el("td", { class: "mono", title: v.digest || "", text: v.digest ? v.digest.slice(0, 12) : "–" }));
      tbody.append(row);
      if (v.text !== undefined) {
        tbody.append(el("tr", { class: "text-row" }, el("td", { colspan: 10, class: "mono", text: v.text })));
      }
    }
  }

  async function refresh() {
    try {
      const [s, r] = await Promise.all([api("api/stats"), api("api/recent?limit=50")]);
      renderStats(s);
      renderRecent(r);
      setStatus(true, "live · updated " + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (err) {
      setStatus(false, err.status === 401 ? "session expired: reload the page to log in" : "offline: " + err.message);
    }
  }

  function schedule() {
    clearTimeout(timer);
    if ($("auto").checked && !document.hidden) timer = setTimeout(async () => { await refresh(); schedule(); }, REFRESH_MS);
  }

  // -- try a message -------------------------------------------------------------------------
  function levelOf(score, th) {
    let level = "clear";
    for (const l of LEVELS) if (th[l] !== undefined && score >= th[l]) level = l;
    return level;
  }

  function renderSignals(verdict, policy) {
    const box = $("try-signals");
    box.replaceChildren();
    const th = verdict.thresholds || {};
    const enabled = new Set((policy && policy.signals) || Object.keys(verdict.signals));
    for (const [name, score] of Object.entries(verdict.signals)) {
      const lvl = levelOf(score, th);
      const on = enabled.has(name);
      const track = el("div", { class: "track" });
      const fill = el("div", { class: "fill " + lvl });
      fill.style.width = Math.max(0, Math.min(1, score)) * 100 + "%";
      track.append(fill);
      for (const l of LEVELS) {
        if (th[l] === undefined) continue;
        const tick = el("div", { class: "tick " + l, title: `${l} ${th[l].toFixed(3)}` });
        tick.style.left = `calc(${th[l] * 100}% - 1px)`;
        track.append(tick);
      }
      const label = `${name}: ${score.toFixed(3)}, ${lvl}` + (on ? "" : " (not enabled in this policy)") +
        "; thresholds " + LEVELS.filter((l) => th[l] !== undefined).map((l) => `${l} ${th[l].toFixed(2)}`).join(", ");
      box.append(
        el("div", { class: "signal" + (on ? "" : " off") + (verdict.signal === name ? " driving" : ""), role: "listitem" },
          el("span", { class: "name", text: name + (verdict.signal === name ? " ◂" : "") }),
          el("div", { role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 1, "aria-valuenow": score.toFixed(3) }, track),
          el("span", { class: "value", text: score.toFixed(3) })));
    }
    box.append(el("p", { class: "legend", text: "Ticks: notice · warning · critical thresholds of the policy (the composite score is the highest enabled signal)." }));
  }

  function renderRead(result) {
    const out = $("try-read");
    const note = $("try-note");
    out.replaceChildren();
    const hl = result.highlight;
    if (!hl) {
      note.textContent = "(nothing was screened)";
      return;
    }
    const parts = [];
    if (hl.seam) parts.push(`seam between messages ${hl.message_index - 1} and ${hl.message_index}`);
    else if (hl.message_index !== null && hl.message_index !== undefined) parts.push(`message ${hl.message_index}`);
    parts.push(hl.changed ? "normalised: shown as the model read it" : "identical to the input");
    const span = hl.span;
    if (span) parts.push(`highlight: tokens ${span.token_start}–${span.token_start + span.n_tokens - 1} of ${span.tokens}, chars ${span.start}–${span.end}`);
    else parts.push("no token offsets from this model: no highlight");
    note.textContent = "(" + parts.join("; ") + ")";
    const text = hl.text;
    if (!span) {
      out.textContent = text;
      return;
    }
    const quiet = result.verdict.level === "clear";
    let start = span.start; // a token's leading space is not worth marking
    while (start < span.end && /\s/.test(text[start])) start++;
    const mark = el("mark", { id: "try-mark", class: quiet ? "quiet" : null, title: "the window that drove the score" }, text.slice(start, span.end));
    out.append(text.slice(0, start), mark, text.slice(span.end));
    out.scrollTop = Math.max(0, mark.offsetTop - 24); // the span in view, a little context above
  }

  async function onScreen(ev) {
    ev.preventDefault();
    const kind = document.querySelector("input[name=kind]:checked").value;
    const raw = $("try-input").value;
    const policy = $("try-policy").value || null;
    const body = { policy: policy };
    $("try-error").hidden = true;
    if (kind === "messages") {
      try {
        body.messages = JSON.parse(raw);
      } catch (e) {
        showError("Not valid JSON: " + e.message);
        return;
      }
    } else {
      body.text = raw;
    }
    const button = $("try-submit");
    button.disabled = true;
    button.textContent = "Screening…";
    try {
      const result = await api("api/screen", {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body),
      });
      const v = result.verdict;
      $("try-result").hidden = false;
      const badge = $("try-action");
      badge.className = "badge " + v.action;
      badge.textContent = v.action;
      $("try-summary").textContent =
        `${v.level} · score ${v.score.toFixed(3)}` + (v.signal ? ` · driven by ${v.signal}` : "") +
        ` · policy ${v.policy} · ${v.latency_ms.toFixed(1)} ms` + (v.error_code ? ` · error ${v.error_code}` : "");
      renderSignals(v, stats && stats.policies[v.policy]);
      renderRead(result);
      refresh();
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Screen";
    }
  }

  function showError(msg) {
    $("try-result").hidden = false;
    const e = $("try-error");
    e.textContent = msg;
    e.hidden = false;
    $("try-action").className = "badge";
    $("try-action").textContent = "error";
    $("try-summary").textContent = "";
    $("try-signals").replaceChildren();
    $("try-read").replaceChildren();
    $("try-note").textContent = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("try-form").addEventListener("submit", onScreen);
    $("auto").addEventListener("change", schedule);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
      schedule();
    });
    refresh().then(schedule);
  });
})();
