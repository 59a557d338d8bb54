// The OCS portal: a page over the REST API (/api/v1), nothing else. Every value from the
// API is put on the page as text (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const SVG = "http://www.w3.org/2000/svg";
let current = null;      // the subscriber shown in the care view
let nocTimer = null;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("ocs-token") || ""; }

async function call(method, path, body) {
  const headers = { "Authorization": "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, { method, headers,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const err = new Error((data && (data.detail || data.title)) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}

// Unix seconds (alarms, fraud cases) as UTC ISO 8601, like the CLI's other times.
function utc(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toISOString().replace(".000Z", "Z") : seconds;
}

function say(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "error" : "";
  m.hidden = !text;
}

function failed(err) {
  if (err.status === 401) { signOut(); say("Signed out: the token is not valid any more.", true); return; }
  say(err.message, true);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function button(label, onClick, cls) {
  const b = document.createElement("button");
  b.textContent = label;
  b.type = "button";
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function fill(tableId, rows, make) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    make(tr, item);
    body.appendChild(tr);
  }
}

function facts(dlId, pairs) {
  const dl = $(dlId);
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const div = document.createElement("div");
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v === null || v === undefined ? "–" : String(v);
    div.append(dt, dd);
    dl.appendChild(div);
  }
}

// A bar chart of values by label (negative values below the axis), in SVG.
function bars(svgId, labels, values) {
  const svg = $(svgId);
  svg.replaceChildren();
  const w = svg.clientWidth || 800, h = svg.clientHeight || 180, pad = 24;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (!values.length) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", pad); t.setAttribute("y", h / 2); t.textContent = "no data";
    svg.appendChild(t);
    return;
  }
  const max = Math.max(...values.map(Math.abs), 1e-9);
  const hasNeg = values.some((v) => v < 0);
  const zero = hasNeg ? h / 2 : h - pad;
  const scale = (hasNeg ? h / 2 - pad : h - 2 * pad) / max;
  const step = Math.min((w - 2 * pad) / values.length, 48);
  values.forEach((v, i) => {
    const r = document.createElementNS(SVG, "rect");
    const len = Math.max(Math.abs(v) * scale, 1);
    r.setAttribute("x", pad + i * step + step * 0.15);
    r.setAttribute("width", Math.max(step * 0.7, 1));
    r.setAttribute("y", v >= 0 ? zero - len : zero);
    r.setAttribute("height", len);
    r.setAttribute("fill", v >= 0 ? "#1f5fbf" : "#b3261e");
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `${labels[i]}: ${v}`;
    r.appendChild(tip);
    svg.appendChild(r);
  });
  for (const [i, label] of [[0, labels[0]], [values.length - 1, labels[labels.length - 1]]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", pad + i * step); t.setAttribute("y", h - 6); t.textContent = label;
    svg.appendChild(t);
  }
}

// -- views -------------------------------------------------------------------------------

function show(view) {
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== view;
  for (const b of document.querySelectorAll("nav .tab")) b.classList.toggle("active", b.dataset.view === view);
  clearInterval(nocTimer);
  say("");
  if (view === "noc") { loadAlarms(); nocTimer = setInterval(loadAlarms, 5000); }
  if (view === "fraud") loadCases();
  if (view === "kpis") loadKpis();
}

async function signIn(t) {
  sessionStorage.setItem("ocs-token", t);
  try {
    const me = await call("GET", "/whoami");
    $("who").textContent = `${me.name || me.token_id} (${me.role})`;
    $("signin").hidden = true;
    $("nav").hidden = false;
    show(me.role === "noc" ? "noc" : "care");
  } catch (err) {
    sessionStorage.removeItem("ocs-token");
    say(err.status === 401 ? "That token is not valid." : err.message, true);
  }
}

function signOut() {
  sessionStorage.removeItem("ocs-token");
  clearInterval(nocTimer);
  for (const s of document.querySelectorAll(".view")) s.hidden = true;
  $("nav").hidden = true;
  $("signin").hidden = false;
  $("token").value = "";
}

// care

async function search(text) {
  const found = await call("GET", "/subscribers?q=" + encodeURIComponent(text));
  const box = $("results");
  box.replaceChildren();
  $("subscriber").hidden = true;
  if (!found.items.length) { say(`No subscriber is ${text}.`, true); return; }
  if (found.items.length === 1) { await openSubscriber(found.items[0].msisdn); return; }
  for (const s of found.items) {
    const p = document.createElement("p");
    p.className = "result";
    p.textContent = `${s.msisdn} — ${s.plan}, ${s.status}`;
    p.addEventListener("click", () => openSubscriber(s.msisdn).catch(failed));
    box.appendChild(p);
  }
}

function newReference() {
  const rnd = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  return `portal-${Date.now()}-${rnd}`;
}

async function openSubscriber(msisdn) {
  const [s, usage] = await Promise.all([
    call("GET", "/subscribers/" + encodeURIComponent(msisdn)),
    call("GET", "/subscribers/" + encodeURIComponent(msisdn) + "/usage")]);
  current = s;
  $("subscriber").hidden = false;
  $("sub-title").textContent = `${s.msisdn} (${s.status})`;
  facts("sub-facts", [["balance", `${s.balance} ${s.currency}`], ["available", s.available],
    ["reserved", s.reserved], ["plan", s.plan], ["mode", s.mode], ["IMSI", s.imsi || "–"],
    ["user name", s.username || "–"], ["roaming", s.roaming ? "allowed" : "barred"]]);
  $("suspend").disabled = s.status !== "active";
  $("resume").disabled = !["suspended", "blocked"].includes(s.status);
  fill("allowances", Object.entries(s.allowances), (tr, [svc, a]) => {
    cell(tr, svc); cell(tr, a.total, "num"); cell(tr, a.used, "num");
    cell(tr, a.reserved, "num"); cell(tr, a.remaining, "num");
  });
  $("topup-reference").value = newReference();
  fill("usage", usage.slice().reverse(), (tr, u) => {
    cell(tr, u.time); cell(tr, u.kind); cell(tr, u.amount, "num"); cell(tr, u.service);
    cell(tr, u.units, "num"); cell(tr, u.reference || u.record_id); cell(tr, u.actor);
    cell(tr, u.balance_after, "num");
  });
  const byDay = new Map();
  for (const u of usage) {
    const day = u.time.slice(0, 10);
    byDay.set(day, (byDay.get(day) || 0) + Number(u.amount));
  }
  bars("usage-chart", [...byDay.keys()], [...byDay.values()].map((v) => Math.round(v * 1e4) / 1e4));
}

async function topUp(amount, reference) {
  const r = await call("POST", `/subscribers/${encodeURIComponent(current.msisdn)}/topups`,
    { amount, reference });
  await openSubscriber(current.msisdn);
  say(r.replayed ? `Reference ${reference} was already credited: nothing more.`
    : `Topped up ${r.amount}: balance ${r.balance}.`);
}

async function setStatus(status) {
  await call("PATCH", "/subscribers/" + encodeURIComponent(current.msisdn), { status });
  await openSubscriber(current.msisdn);
  say(`${current.msisdn} is ${status}.`);
}

// NOC

async function loadAlarms() {
  try {
    const alarms = await call("GET", "/alarms?active=true");
    fill("alarms", alarms, (tr, a) => {
      tr.dataset.alarm = a.alarm_id;
      cell(tr, a.alarm_id, "num");
      cell(tr, a.perceived_severity, "sev-" + a.perceived_severity);
      cell(tr, a.element); cell(tr, a.resource); cell(tr, a.alarm_type);
      cell(tr, a.probable_cause); cell(tr, a.count, "num"); cell(tr, utc(a.last_seen));
      cell(tr, a.acknowledged ? "yes" : "");
      const td = cell(tr, "");
      if (!a.acknowledged) td.appendChild(button("Ack", () => alarmAction(a.alarm_id, "ack")));
      td.appendChild(button("Clear", () => alarmAction(a.alarm_id, "clear"), "secondary"));
    });
    $("noc-updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) { failed(err); }
}

async function alarmAction(id, action) {
  try {
    await call("POST", `/alarms/${id}/${action}`);
    say(`Alarm ${id} ${action === "ack" ? "acknowledged" : "cleared"}.`);
    await loadAlarms();
  } catch (err) { failed(err); }
}

// fraud

async function loadCases() {
  try {
    const cases = await call("GET", "/fraud/cases?open=true");
    const box = $("cases");
    box.replaceChildren();
    if (!cases.length) { box.textContent = "No open case."; return; }
    for (const c of cases) {
      const div = document.createElement("div");
      div.className = "case";
      const h = document.createElement("h4");
      h.textContent = `Case ${c.case_id}: ${c.msisdn} — ${c.action} (score ${c.score})`;
      const ul = document.createElement("ul");
      for (const f of c.findings || []) {
        const li = document.createElement("li");
        li.textContent = `${f.name} = ${f.value} (threshold ${f.threshold}, weight ${f.weight}) at ${utc(f.at)}`;
        ul.appendChild(li);
      }
      const label = document.createElement("label");
      const box2 = document.createElement("input");
      box2.type = "checkbox";
      label.append(box2, "reinstate the subscriber");
      div.append(h, ul, label, button("Resolve", async () => {
        try {
          await call("POST", `/fraud/cases/${c.case_id}/resolve`, { reinstate: box2.checked });
          say(`Case ${c.case_id} resolved.`);
          await loadCases();
        } catch (err) { failed(err); }
      }));
      box.appendChild(div);
    }
  } catch (err) { failed(err); }
}

// KPIs

async function loadKpis() {
  const period = $("kpi-period").value || new Date().toISOString().slice(0, 7);
  $("kpi-period").value = period;
  try {
    const k = await call("GET", "/kpis?period=" + encodeURIComponent(period));
    const money = (m) => Object.entries(m).map(([c, v]) => `${v} ${c}`).join(", ") || "–";
    facts("kpi-facts", [["revenue", money(k.revenue)], ["ARPU", money(k.arpu)],
      ["active subscribers", k.active_subscribers], ["CDR rows", k.rows],
      ["roaming share (charge)", k.roaming.share_charge],
      ["fraud cases opened / resolved", `${k.fraud_cases.opened} / ${k.fraud_cases.resolved}`],
      ["alarms raised / cleared", `${k.alarms.raised} / ${k.alarms.cleared}`],
      ["alarm MTTR", k.alarms.mttr_s === null ? null : `${Math.round(k.alarms.mttr_s)} s`]]);
    const byDay = new Map();
    for (const d of k.daily) byDay.set(d.day, (byDay.get(d.day) || 0) + Number(d.charge));
    bars("kpi-chart", [...byDay.keys()], [...byDay.values()]);
    fill("kpi-services", k.by_service, (tr, s) => {
      cell(tr, s.service); cell(tr, s.records, "num"); cell(tr, s.units, "num"); cell(tr, s.charge, "num");
    });
    fill("kpi-top", k.top_destinations, (tr, t) => {
      cell(tr, t.rate_id); cell(tr, t.service); cell(tr, t.records, "num");
      cell(tr, t.units, "num"); cell(tr, t.charge, "num");
    });
  } catch (err) { failed(err); }
}

// -- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
  $("signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => show(b.dataset.view));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault(); say(""); search($("search").value.trim()).catch(failed);
  });
  $("topup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    topUp($("topup-amount").value.trim(), $("topup-reference").value.trim()).catch(failed);
  });
  $("suspend").addEventListener("click", () => setStatus("suspended").catch(failed));
  $("resume").addEventListener("click", () => setStatus("active").catch(failed));
  $("kpi-form").addEventListener("submit", (e) => { e.preventDefault(); loadKpis(); });
  if (token()) signIn(token());
});
