// The room's devices panel: status and newest readings (live), a chart of one
// metric over the last hour (1m rollups) or day (1h rollups), commands and the
// device's answers. Live updates arrive as frames of room.js's WebSocket
// ("bridge:frame" events); each device's row is built once and then patched,
// so a room with a hundred devices stays cheap.
(function () {
  "use strict";
  const panel = document.getElementById("devices");
  if (!panel) return;
  const room = panel.dataset.room;
  const list = document.getElementById("device-list");
  const detail = document.getElementById("device-detail");
  const chart = document.getElementById("chart");
  const chartTitle = document.getElementById("chart-title");
  const chartNote = document.getElementById("chart-note");
  const answers = document.getElementById("answers");
  const commandForm = document.getElementById("command");
  const commandText = document.getElementById("command-text");
  const commandStatus = document.getElementById("command-status");
  const SVG = "http://www.w3.org/2000/svg";
  const SPANS = { hour: { window: "1m", seconds: 3600 }, day: { window: "1h", seconds: 86400 } };
  const MAX_ANSWERS = 8;

  const devices = new Map(); // device id -> {row, status, readings: Map(metric -> {value, unit, at, cells}), alerts: Set, answers: []}
  let selected = null; // {device, metric}
  let span = "hour";
  let chartTimer = null;
  let chartLoadedAt = 0;
  let early = []; // frames that came before the device list: replayed once it is there
  let trail = []; // the chosen metric's readings seen live since it was chosen: [{t, v}]
  let lastDrawn = null; // what the last chart load returned, redrawn with the trail
  const MAX_TRAIL = 600;

  function ago(at) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(at).getTime()) / 1000));
    if (seconds < 10) return "just now";
    if (seconds < 60) return seconds + " s ago";
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + " min ago";
    const hours = Math.round(minutes / 60);
    if (hours < 48) return hours + " h ago";
    return Math.round(hours / 24) + " days ago";
  }

  function format(value) {
    return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toFixed(2)).toString();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the list -----------------------------------------------------------------

  function addDevice(info) {
    const row = el("li", "device");
    row.dataset.device = info.device;
    const head = el("div", "device-head");
    const dot = el("span", "dot");
    const name = el("span", "device-name", info.device);
    const state = el("span", "state");
    const badge = el("span", "alert-badge");
    badge.hidden = true;
    head.append(dot, name, " ", state, badge);
    const readings = el("div", "readings");
    row.append(head, readings);
    const device = { row, state, badge, readingsEl: readings, readings: new Map(), alerts: new Map(), answers: [] };
    devices.set(info.device, device);
    setStatus(info.device, info.status);
    Object.keys(info.readings).forEach(function (metric) { setReading(info.device, metric, info.readings[metric]); });
    info.alerts.forEach(function (alert) { device.alerts.set(alert.rule, alert.name); });
    showAlerts(device);
    return row;
  }

  function setStatus(id, status) {
    const device = devices.get(id);
    if (!device) return;
    device.row.dataset.status = status;
    device.state.textContent = status === "unknown" ? "" : status;
  }

  function setReading(id, metric, reading) {
    const device = devices.get(id);
    if (!device) return;
    let entry = device.readings.get(metric);
    if (!entry) {
      const button = el("button", "metric", metric);
      button.type = "button";
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", function () { select(id, metric); });
      const value = el("span", "value");
      const age = el("span", "age");
      device.readingsEl.append(button, value, age);
      entry = { button, value, age };
      device.readings.set(metric, entry);
    }
    entry.at = reading.at;
    entry.unit = reading.unit || entry.unit || "";
    entry.value.textContent = format(reading.value) + (entry.unit ? " " + entry.unit : "");
    entry.age.textContent = ago(reading.at);
    entry.age.dataset.at = reading.at;
  }

  function showAlerts(device) {
    const names = Array.from(device.alerts.values());
    device.badge.hidden = !names.length;
    device.badge.textContent = names.length ? "alert: " + names.join(", ") : "";
  }

  async function load() {
    try {
      const response = await fetch("/api/rooms/" + encodeURIComponent(room) + "/devices", { credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const body = await response.json();
      list.replaceChildren();
      const fragment = document.createDocumentFragment();
      body.devices.forEach(function (info) { fragment.append(addDevice(info)); });
      list.append(fragment);
      if (!body.devices.length) list.append(el("li", "empty", "No devices in this room yet."));
      const first = body.devices.find(function (d) { return Object.keys(d.readings).length; });
      if (first && !selected) {
        const metrics = Object.keys(first.readings);
        select(first.device, metrics.includes("temperature") ? "temperature" : metrics[0]);
      }
    } catch (err) {
      list.replaceChildren(el("li", "empty", "Could not load the devices: " + err.message));
    }
    const frames = early;
    early = null;
    frames.forEach(onFrame);
  }

  // A device the list does not show yet (it joined the room since): fetch the list
  // again, at most every 5 s, and add the new ones; the others keep their rows.
  let newDevicesTimer = null;
  function scheduleNewDevices() {
    if (newDevicesTimer || early) return;
    newDevicesTimer = setTimeout(async function () {
      try {
        const response = await fetch("/api/rooms/" + encodeURIComponent(room) + "/devices", { credentials: "same-origin" });
        if (!response.ok) return;
        const body = await response.json();
        body.devices.forEach(function (info) {
          if (devices.has(info.device)) return;
          const empty = list.querySelector("li.empty");
          if (empty) empty.remove();
          list.append(addDevice(info));
        });
      } finally {
        setTimeout(function () { newDevicesTimer = null; }, 5000);
      }
    }, 500);
  }

  // --- live updates from room.js's socket ----------------------------------------------

  function onFrame(frame) {
    if (frame.type === "telemetry") {
      if (!devices.has(frame.device)) { scheduleNewDevices(); return; } // new to the room
      Object.keys(frame.metrics).forEach(function (metric) { setReading(frame.device, metric, frame.metrics[metric]); });
      const reading = selected && selected.device === frame.device && frame.metrics[selected.metric];
      if (reading) {
        trail.push({ t: new Date(reading.at).getTime(), v: reading.value });
        if (trail.length > MAX_TRAIL) trail.shift();
        redraw();
        scheduleChart();
      }
    } else if (frame.type === "presence" && frame.who.kind === "device") {
      if (!devices.has(frame.who.name)) scheduleNewDevices();
      setStatus(frame.who.name, frame.state);
    } else if (frame.type === "message") {
      onMessage(frame.message);
    } else if (frame.type === "history") {
      frame.messages.forEach(onMessage);
    }
  }

  function onMessage(message) {
    const alert = message.data && message.data.alert;
    if (alert && devices.has(alert.device)) {
      const device = devices.get(alert.device);
      if (alert.state === "firing") device.alerts.set(alert.rule, alert.name);
      else device.alerts.delete(alert.rule);
      showAlerts(device);
    }
    if (message.sender.kind === "device" && devices.has(message.sender.name)) {
      const device = devices.get(message.sender.name);
      device.answers.push(message);
      if (device.answers.length > MAX_ANSWERS) device.answers.shift();
      if (selected && selected.device === message.sender.name) showAnswers();
    }
  }

  document.addEventListener("bridge:frame", function (event) {
    if (early) early.push(event.detail);
    else onFrame(event.detail);
  });
  setInterval(function () {
    list.querySelectorAll(".age[data-at]").forEach(function (age) { age.textContent = ago(age.dataset.at); });
  }, 5000);

  // --- the chosen device: chart, commands, answers ----------------------------------

  function select(id, metric) {
    if (selected) {
      const old = devices.get(selected.device);
      if (old) {
        old.row.classList.remove("selected");
        const entry = old.readings.get(selected.metric);
        if (entry) entry.button.setAttribute("aria-pressed", "false");
      }
    }
    if (!selected || selected.device !== id || selected.metric !== metric) {
      trail = []; // a different series: its live dots start now
      lastDrawn = null;
    }
    selected = { device: id, metric: metric };
    const device = devices.get(id);
    device.row.classList.add("selected");
    const entry = device.readings.get(metric);
    if (entry) entry.button.setAttribute("aria-pressed", "true");
    detail.hidden = false;
    detail.dataset.device = id;
    detail.dataset.metric = metric;
    showAnswers();
    loadChart();
  }

  function showAnswers() {
    const device = devices.get(selected.device);
    answers.replaceChildren();
    device.answers.forEach(function (message) {
      const item = el("li", "", new Date(message.created).toLocaleTimeString() + " " + message.text);
      answers.append(item);
    });
  }

  function scheduleChart() {
    if (chartTimer) return;
    const wait = Math.max(0, 3000 - (Date.now() - chartLoadedAt)); // at most one load per 3 s
    chartTimer = setTimeout(function () { chartTimer = null; loadChart(); }, wait);
  }

  async function loadChart() {
    if (!selected) return;
    const want = selected;
    const chosen = SPANS[span];
    const since = new Date(Date.now() - chosen.seconds * 1000).toISOString();
    chartLoadedAt = Date.now();
    const entry = devices.get(want.device).readings.get(want.metric);
    chartTitle.textContent = want.device + " · " + want.metric + (entry && entry.unit ? " (" + entry.unit + ")" : "");
    try {
      const url = "/api/devices/" + encodeURIComponent(want.device) + "/telemetry?metric=" +
        encodeURIComponent(want.metric) + "&window=" + chosen.window + "&since=" + encodeURIComponent(since);
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const body = await response.json();
      if (selected !== want) return; // chosen something else meanwhile
      lastDrawn = { rollups: body.rollups, seconds: body.seconds, span: chosen.seconds };
      redraw();
      const windows = body.rollups.length === 1 ? " window" : " windows";
      chartNote.textContent = body.rollups.length + windows + " of " + chosen.window +
        " (mean, with min–max band) over the last " + span + "; dots: readings as they arrive";
    } catch (err) {
      chartNote.textContent = "Could not load the chart: " + err.message;
    }
  }

  function redraw() {
    if (!lastDrawn) return;
    const to = Date.now();
    let from = to - lastDrawn.span * 1000;
    // Little data yet: the chart spans what there is, so a new device's chart is not a dot.
    const firsts = [];
    if (lastDrawn.rollups.length) firsts.push(new Date(lastDrawn.rollups[0].start).getTime());
    if (trail.length) firsts.push(trail[0].t);
    if (firsts.length) {
      const first = Math.min.apply(null, firsts);
      from = Math.max(from, first - Math.max(5000, (to - first) * 0.1));
    }
    draw(lastDrawn.rollups, from, to, lastDrawn.seconds, span === "hour" ? trail : []);
  }

  function draw(rollups, from, to, seconds, live) {
    const W = 600, H = 200, L = 44, R = 8, T = 10, B = 24;
    chart.replaceChildren();
    if (!rollups.length && !live.length) {
      const empty = document.createElementNS(SVG, "text");
      empty.setAttribute("x", W / 2); empty.setAttribute("y", H / 2);
      empty.setAttribute("text-anchor", "middle"); empty.setAttribute("class", "axis");
      empty.textContent = "no readings in this span yet";
      chart.append(empty);
      return;
    }
    const values = rollups.map(function (r) { return r.min; })
      .concat(rollups.map(function (r) { return r.max; }), live.map(function (p) { return p.v; }));
    let low = Math.min.apply(null, values);
    let high = Math.max.apply(null, values);
    if (high - low < 1e-9) { low -= 1; high += 1; }
    const pad = (high - low) * 0.08;
    low -= pad; high += pad;
    const x = function (t) { return L + (W - L - R) * (t - from) / (to - from); };
    const y = function (v) { return T + (H - T - B) * (1 - (v - low) / (high - low)); };
    // A window's point sits at its middle, or at its newest reading if that came earlier
    // (the window still open, or its device quiet since).
    const mid = function (r) {
      return Math.min(to, new Date(r.start).getTime() + seconds * 500, new Date(r.last_at).getTime());
    };
    const add = function (tag, attrs, text) {
      const node = document.createElementNS(SVG, tag);
      Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
      if (text !== undefined) node.textContent = text;
      chart.append(node);
      return node;
    };
    [low + pad, (low + high) / 2, high - pad].forEach(function (v) {
      add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" });
      add("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, format(v));
    });
    add("text", { x: L, y: H - 6, class: "axis" }, new Date(from).toLocaleTimeString());
    add("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "axis" }, new Date(to).toLocaleTimeString());
    const upper = rollups.map(function (r) { return x(mid(r)) + "," + y(r.max); });
    const lower = rollups.slice().reverse().map(function (r) { return x(mid(r)) + "," + y(r.min); });
    if (rollups.length) {
      add("polygon", { points: upper.concat(lower).join(" "), class: "band" });
      add("polyline", { points: rollups.map(function (r) { return x(mid(r)) + "," + y(r.mean); }).join(" "), class: "line" });
    }
    live.forEach(function (p) {
      if (p.t >= from) add("circle", { cx: x(p.t), cy: y(p.v), r: 1.6, class: "live" });
    });
    rollups.forEach(function (r) {
      const point = add("circle", { cx: x(mid(r)), cy: y(r.mean), r: 2.5, class: "point" });
      const title = document.createElementNS(SVG, "title");
      title.textContent = new Date(r.start).toLocaleString() + ": mean " + format(r.mean) +
        ", min " + format(r.min) + ", max " + format(r.max) + ", " + r.count + " readings";
      point.append(title);
    });
  }

  detail.querySelectorAll("[data-span]").forEach(function (button) {
    button.addEventListener("click", function () {
      span = button.dataset.span;
      detail.querySelectorAll("[data-span]").forEach(function (b) {
        b.setAttribute("aria-pressed", b === button ? "true" : "false");
      });
      loadChart();
    });
  });

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  if (commandForm) {
    commandForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      const text = commandText.value;
      if (!text.trim() || !selected) return;
      const device = selected.device;
      commandStatus.textContent = "sending…";
      try {
        const response = await fetch("/api/devices/" + encodeURIComponent(device) + "/commands", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify({ text: text }),
        });
        const body = await response.json();
        if (!response.ok) throw new Error(body.error ? body.error.detail : "HTTP " + response.status);
        commandStatus.textContent = "command " + body.command.id + " sent to " + device + "; its answers show below";
        commandText.value = "";
      } catch (err) {
        commandStatus.textContent = "not sent: " + err.message;
      }
    });
  }

  load();
})();
