// Live chat for one room: history first, then live messages; reconnects with
// back-off and resumes after the last seq seen, so nothing is missed.
(function () {
  "use strict";
  const chat = document.getElementById("chat");
  if (!chat) return;
  const room = chat.dataset.room;
  const list = document.getElementById("messages");
  const presence = document.getElementById("presence");
  const statusEl = document.getElementById("status");
  const errorEl = document.getElementById("error");
  const form = document.getElementById("compose");
  const input = document.getElementById("text");

  let lastSeq = 0;
  let firstSeq = 0; // the oldest seq shown; scrolling to the top loads what is before it
  let loadingOlder = null;
  let socket = null;
  let attempt = 0;
  let fetching = null;
  const outbox = new Map(); // client_id -> frame, resent after a reconnect until echoed

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function setStatus(text, state) {
    statusEl.textContent = text;
    statusEl.dataset.state = state;
  }

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  function render(message) {
    const li = document.createElement("li");
    li.className = "message origin-" + message.origin;
    li.dataset.seq = String(message.seq);
    li.dataset.id = message.id;
    const time = document.createElement("time");
    time.dateTime = message.created;
    time.textContent = when(message.created);
    const who = document.createElement("span");
    who.className = "sender kind-" + message.sender.kind;
    who.textContent = message.sender.name;
    const via = document.createElement("span");
    via.className = "origin";
    via.textContent = message.origin;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    li.append(time, " ", who, " ", via, " ", text);
    const alert = message.data && message.data.alert;
    if (alert) {
      li.classList.add("alert-" + alert.state); // the text says it all; no raw JSON
    } else if (message.data) {
      const data = document.createElement("code");
      data.className = "data";
      data.textContent = JSON.stringify(message.data);
      li.append(" ", data);
    }
    return li;
  }

  // The time of day for today's messages; the date too for older ones.
  function when(created) {
    const date = new Date(created);
    const today = new Date();
    if (date.toDateString() === today.toDateString()) return date.toLocaleTimeString();
    return date.toLocaleDateString() + " " + date.toLocaleTimeString();
  }

  // New messages reach the DOM once per frame, not once each: reading the scroll
  // position after every append forced a layout per message (O(messages shown)).
  // The list keeps the newest MAX_SHOWN while the reader is at the bottom; what is
  // dropped is loaded again by scrolling up.
  const MAX_SHOWN = 500;
  let pending = [];
  let flushScheduled = false;

  function append(message) {
    if (message.seq <= lastSeq) return; // already shown (or about to be)
    pending.push(message);
    lastSeq = message.seq;
    if (!firstSeq) firstSeq = message.seq;
    if (!flushScheduled) {
      flushScheduled = true;
      // A hidden tab gets no animation frames: batch there on a timer instead.
      if (document.hidden) setTimeout(flush, 250);
      else requestAnimationFrame(flush);
    }
  }

  function flush() {
    flushScheduled = false;
    if (!pending.length) return;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const fragment = document.createDocumentFragment();
    pending.forEach(function (message) { fragment.append(render(message)); });
    pending = [];
    list.append(fragment);
    if (!atBottom) return;
    const extra = list.children.length - MAX_SHOWN;
    if (extra > 0) {
      for (let i = 0; i < extra; i++) list.firstElementChild.remove();
      firstSeq = Number(list.firstElementChild.dataset.seq);
      olderMarker().textContent = "";
    }
    list.scrollTop = list.scrollHeight;
  }

  // A line above the list (not an item of it): loading, or the room's beginning reached.
  function olderMarker() {
    return document.getElementById("older");
  }

  // Scrolled to the top: the page before the oldest shown message, kept in view.
  async function loadOlder() {
    if (loadingOlder || firstSeq <= 1) return;
    const marker = olderMarker();
    marker.textContent = "loading older messages…";
    loadingOlder = (async () => {
      try {
        const response = await fetch(
          "/api/rooms/" + encodeURIComponent(room) + "/messages?before=" + firstSeq + "&limit=100",
          { credentials: "same-origin" }
        );
        if (!response.ok) throw new Error("history: HTTP " + response.status);
        const body = await response.json();
        flush(); // anything still queued goes below first
        const height = list.scrollHeight;
        const fragment = document.createDocumentFragment();
        body.messages.forEach(function (message) { fragment.append(render(message)); });
        list.prepend(fragment);
        if (body.messages.length) firstSeq = body.messages[0].seq;
        if (!body.messages.length) firstSeq = 1; // a hole down to the start: nothing older
        list.scrollTop += list.scrollHeight - height;
        marker.textContent = firstSeq <= 1 ? "the beginning of the room" : "";
        if (list.scrollHeight <= list.clientHeight) setTimeout(loadOlder, 0); // nothing to scroll yet
      } catch (err) {
        marker.textContent = "";
        showError("Could not load older messages: " + err.message);
      } finally {
        loadingOlder = null;
      }
    })();
    return loadingOlder;
  }

  list.addEventListener("scroll", function () {
    if (list.scrollTop < 40) loadOlder();
  });

  let wanted = 0; // the newest seq seen live: a gap fill goes on until it has it

  function add(message) {
    if (message.seq > lastSeq + 1 && lastSeq > 0) {
      wanted = Math.max(wanted, message.seq);
      fillGap(); // a message went missing on the way: the history API has it
      return;
    }
    append(message);
  }

  async function fillGap() {
    if (fetching) return fetching;
    fetching = (async () => {
      let retries = 0;
      try {
        for (;;) {
          const response = await fetch(
            "/api/rooms/" + encodeURIComponent(room) + "/messages?after=" + lastSeq + "&limit=500",
            { credentials: "same-origin" }
          );
          if (!response.ok) throw new Error("history: HTTP " + response.status);
          const body = await response.json();
          // The database is the truth: show what it has, in order, even across a
          // hole that a deleted message left.
          body.messages.forEach(append);
          // A short page ends it, unless a message seen live while this one was asked
          // for is newer than it (it arrived during the fetch and would stay missing
          // until the next one); a few tries, for one deleted since.
          if (body.messages.length < 500 && (lastSeq >= wanted || ++retries > 3)) break;
        }
      } catch (err) {
        showError("Could not load missed messages: " + err.message);
      } finally {
        fetching = null;
      }
    })();
    return fetching;
  }

  function setPresence(who, state) {
    const key = who.kind + ":" + who.name;
    let item = presence.querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (state === "online") {
      if (item) return;
      item = document.createElement("li");
      item.dataset.key = key;
      item.className = "kind-" + who.kind;
      item.textContent = who.name;
      presence.append(item);
    } else if (item) {
      item.remove();
    }
  }

  const CLOSE_REASONS = {
    4400: "the request was malformed",
    4401: "your sign-in ended (logged out, deactivated, new password or revoked token): sign in again and reload",
    4403: "you are not (or no longer) a member of this room",
    4404: "there is no such room",
  };

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = scheme + location.host + "/ws/rooms/" + encodeURIComponent(room) + "/" +
      (lastSeq > 0 ? "?after=" + lastSeq : "");
    setStatus(attempt ? "reconnecting…" : "connecting…", "connecting");
    socket = new WebSocket(url);
    socket.onopen = function () {
      attempt = 0;
      setStatus("connected", "open");
      presence.replaceChildren();
      outbox.forEach(function (frame) { socket.send(JSON.stringify(frame)); });
    };
    socket.onmessage = function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      document.dispatchEvent(new CustomEvent("bridge:frame", { detail: frame }));
      if (frame.type === "history") {
        // A long history comes as several history frames; "more" says another follows.
        frame.messages.forEach(append);
        flush();
        if (firstSeq <= 1 && frame.messages.length) olderMarker().textContent = "the beginning of the room";
        if (!frame.more) {
          list.scrollTop = list.scrollHeight;
          if (list.scrollHeight <= list.clientHeight) loadOlder(); // too short to scroll: fill it
        }
      } else if (frame.type === "message") {
        add(frame.message);
      } else if (frame.type === "ack") {
        outbox.delete(frame.client_id);
      } else if (frame.type === "presence") {
        setPresence(frame.who, frame.state);
      } else if (frame.type === "error") {
        showError(frame.detail + " (" + frame.code + ")");
      }
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code >= 4400 && event.code < 4500) {
        // The server refused us for good; say why in words, then the server's own detail.
        const why = CLOSE_REASONS[event.code] || "refused";
        setStatus("closed: " + why + (errorEl.textContent ? " — " + errorEl.textContent : ""), "closed");
        return;
      }
      const delay = Math.min(30000, 500 * Math.pow(2, attempt)) * (0.5 + Math.random() / 2);
      attempt += 1;
      setStatus("disconnected; retrying in " + Math.round(delay / 1000) + " s", "closed");
      setTimeout(connect, delay);
    };
  }

  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      const frame = { type: "message", text: text, client_id: newId() };
      outbox.set(frame.client_id, frame);
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
      input.value = "";
      showError("");
    });
  }

  connect();
})();
