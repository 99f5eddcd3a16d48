/*
 * clawgate web-chat widget. One script tag on any page:
 *   <script src="https://chat.example.nl/widget.js" data-title="VeloCity" async></script>
 * opens a chat bubble; `data-mode="page"` fills the page instead (that is what /chat serves).
 * Optional: data-lang="nl|de|en" (else the page's or the browser's language), data-open="true".
 *
 * The conversation lives in the gateway: the session id, its token and the id of the last event
 * seen are kept in localStorage, so a reload shows the history and resumes the live events
 * exactly where it left off, on whichever replica answers. Messages are sent with an id chosen
 * here and retried with the same id until accepted, so a flaky network never sends one twice.
 *
 * The host page can follow the chat: the widget's element dispatches a `clawgate:event`
 * CustomEvent for each live event ({id, type, data}).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) {
    return;
  }
  var base = new URL(script.src, document.baseURI).origin;
  var mode = script.getAttribute("data-mode") === "page" ? "page" : "bubble";

  var LABELS = {
    en: {
      title: "Chat with us",
      open: "Open the chat",
      close: "Close the chat",
      placeholder: "Type your message",
      send: "Send",
      typing: "Typing…",
      you: "You",
      agent: "Agent",
      reconnecting: "Connection lost. Reconnecting…",
      unavailable: "The chat is not available right now. Please try again later.",
      retrying: "Not sent yet. Retrying…",
      handover: "A colleague will take over this conversation. Your reference: {ref}",
      log: "Conversation"
    },
    nl: {
      title: "Chat met ons",
      open: "Open de chat",
      close: "Sluit de chat",
      placeholder: "Typ je bericht",
      send: "Versturen",
      typing: "Aan het typen…",
      you: "Jij",
      agent: "Medewerker",
      reconnecting: "Verbinding verbroken. Opnieuw verbinden…",
      unavailable: "De chat is nu niet beschikbaar. Probeer het later nog eens.",
      retrying: "Nog niet verstuurd. Opnieuw proberen…",
      handover: "Een collega neemt dit gesprek over. Je referentie: {ref}",
      log: "Gesprek"
    },
    de: {
      title: "Chatten Sie mit uns",
      open: "Chat öffnen",
      close: "Chat schließen",
      placeholder: "Ihre Nachricht",
      send: "Senden",
      typing: "Schreibt…",
      you: "Sie",
      agent: "Kundenservice",
      reconnecting: "Verbindung unterbrochen. Neu verbinden…",
      unavailable: "Der Chat ist gerade nicht verfügbar. Bitte versuchen Sie es später noch einmal.",
      retrying: "Noch nicht gesendet. Neuer Versuch…",
      handover: "Ein Kollege übernimmt dieses Gespräch. Ihre Referenz: {ref}",
      log: "Gespräch"
    }
  };

  function pickLanguage() {
    var wanted = [script.getAttribute("data-lang"), document.documentElement.lang]
      .concat(navigator.languages || [navigator.language]);
    for (var i = 0; i < wanted.length; i++) {
      var tag = (wanted[i] || "").toLowerCase().split("-")[0];
      if (LABELS[tag]) {
        return tag;
      }
    }
    return "en";
  }
  var lang = pickLanguage();
  var t = LABELS[lang];
  var title = script.getAttribute("data-title") || t.title;

  var STYLE = [
    ":host{all:initial}",
    ".cg{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330}",
    ".cg *{box-sizing:border-box}",
    ".bubble{position:fixed;right:20px;bottom:20px;width:60px;height:60px;border-radius:50%;border:0;display:flex;align-items:center;justify-content:center;",
    "background:#1f5fd1;color:#fff;font-size:28px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}",
    ".bubble:focus-visible,.send:focus-visible,.close:focus-visible,textarea:focus-visible{outline:3px solid #f5a623;outline-offset:2px}",
    ".panel{display:flex;flex-direction:column;background:#fff;overflow:hidden}",
    ".cg.bubble-mode .panel{position:fixed;right:20px;bottom:92px;width:370px;height:560px;max-height:calc(100vh - 112px);",
    "border-radius:14px;box-shadow:0 8px 30px rgba(0,0,0,.25);z-index:2147483000}",
    ".cg.bubble-mode .panel[hidden]{display:none}",
    ".cg.page-mode .panel{position:fixed;inset:0;max-width:760px;margin:0 auto;border-left:1px solid #e3e6ec;border-right:1px solid #e3e6ec}",
    "header{display:flex;align-items:center;justify-content:space-between;padding:12px 16px;background:#1f5fd1;color:#fff}",
    "h2{margin:0;font-size:17px;font-weight:600}",
    ".close{background:none;border:0;color:#fff;font-size:22px;cursor:pointer;padding:4px 8px}",
    ".cg.page-mode .close{display:none}",
    ".log{flex:1;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:8px;background:#f5f7fb}",
    ".msg{max-width:82%;padding:9px 13px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word}",
    ".msg.user{align-self:flex-end;background:#1f5fd1;color:#fff;border-bottom-right-radius:4px}",
    ".msg.agent{align-self:flex-start;background:#fff;border:1px solid #e3e6ec;border-bottom-left-radius:4px}",
    ".msg.pending{opacity:.7}",
    ".msg.streaming::after{content:'▍';animation:blink 1s steps(2) infinite}",
    ".notice{align-self:center;font-size:13px;color:#5a6275;background:#eef1f7;padding:6px 12px;border-radius:10px;text-align:center}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    ".typing{padding:0 16px 6px;font-size:13px;color:#5a6275;min-height:20px;background:#f5f7fb}",
    ".status{padding:6px 16px;font-size:13px;background:#fff4d6;color:#6b4d00}",
    ".status[hidden],.typing[hidden]{display:none}",
    "form{display:flex;gap:8px;padding:10px;border-top:1px solid #e3e6ec;background:#fff}",
    "textarea{flex:1;resize:none;border:1px solid #c9cfdb;border-radius:10px;padding:9px 11px;font:inherit;min-height:42px;max-height:120px}",
    ".send{border:0;border-radius:10px;background:#1f5fd1;color:#fff;font:inherit;font-weight:600;padding:0 16px;cursor:pointer}",
    ".send:disabled{background:#9bb3e0;cursor:default}",
    "@keyframes blink{to{visibility:hidden}}",
    "@media (max-width:600px){.cg.bubble-mode .panel{inset:0;width:auto;height:auto;max-height:none;border-radius:0}}",
    "@media (prefers-reduced-motion:reduce){.msg.streaming::after{animation:none}}"
  ].join("");

  // ---- The DOM ----
  var host = document.createElement("clawgate-chat");
  host.setAttribute("data-state", "starting");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var style = document.createElement("style");
  style.textContent = STYLE;
  root.appendChild(style);
  var frame = el("div", "cg " + mode + "-mode");
  frame.setAttribute("lang", lang);
  root.appendChild(frame);

  var bubble = null;
  var panelId = "clawgate-panel";
  if (mode === "bubble") {
    bubble = el("button", "bubble");
    bubble.type = "button";
    // An icon drawn here: no icon font or emoji font needed.
    bubble.innerHTML =
      '<svg viewBox="0 0 24 24" width="30" height="30" aria-hidden="true" focusable="false">' +
      '<path fill="currentColor" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6.5a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01z"/></svg>';
    bubble.setAttribute("aria-label", t.open);
    bubble.setAttribute("aria-expanded", "false");
    bubble.setAttribute("aria-controls", panelId);
    frame.appendChild(bubble);
  }
  var panel = el("section", "panel");
  panel.id = panelId;
  panel.setAttribute("aria-label", title);
  if (mode === "bubble") {
    panel.hidden = true;
  }
  var header = el("header");
  var heading = el("h2");
  heading.textContent = title;
  var close = el("button", "close");
  close.type = "button";
  close.textContent = "×";
  close.setAttribute("aria-label", t.close);
  header.appendChild(heading);
  header.appendChild(close);
  var status = el("div", "status");
  status.setAttribute("role", "status");
  status.hidden = true;
  var log = el("div", "log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", t.log);
  log.tabIndex = 0;
  var typing = el("div", "typing");
  typing.textContent = t.typing;
  typing.hidden = true;
  var form = el("form");
  var inputId = "clawgate-input";
  var label = el("label", "sr");
  label.htmlFor = inputId;
  label.textContent = t.placeholder;
  var input = el("textarea");
  input.id = inputId;
  input.name = "text";
  input.rows = 1;
  input.maxLength = 4000;
  input.placeholder = t.placeholder;
  input.setAttribute("autocomplete", "off");
  var send = el("button", "send");
  send.type = "submit";
  send.textContent = t.send;
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(send);
  panel.appendChild(header);
  panel.appendChild(status);
  panel.appendChild(log);
  panel.appendChild(typing);
  panel.appendChild(form);
  frame.appendChild(panel);

  function el(tag, className) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    return node;
  }

  function mount() {
    (document.body || document.documentElement).appendChild(host);
    if (mode === "page" || script.getAttribute("data-open") === "true") {
      setOpen(true);
    }
  }

  function setOpen(open) {
    if (mode === "bubble") {
      panel.hidden = !open;
      bubble.setAttribute("aria-expanded", String(open));
      bubble.setAttribute("aria-label", open ? t.close : t.open);
    }
    if (open) {
      start();
      input.focus();
    }
  }
  if (bubble) {
    bubble.addEventListener("click", function () {
      setOpen(panel.hidden);
    });
  }
  close.addEventListener("click", function () {
    setOpen(false);
    if (bubble) {
      bubble.focus();
    }
  });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && mode === "bubble") {
      setOpen(false);
      bubble.focus();
    }
  });
  input.addEventListener("keydown", function (e) {
    // Enter sends, Shift+Enter starts a new line.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit ? form.requestSubmit() : submit(e);
    }
  });
  form.addEventListener("submit", submit);

  // ---- The session ----
  var storeKey = "clawgate:" + base;
  var session = null;
  var starting = null;

  function load() {
    try {
      var saved = JSON.parse(localStorage.getItem(storeKey) || "null");
      if (saved && saved.session_id && saved.token && saved.expires_at * 1000 > Date.now() + 60000) {
        return saved;
      }
    } catch (e) {
      /* storage unavailable or garbled: start over */
    }
    return null;
  }
  function save() {
    try {
      localStorage.setItem(storeKey, JSON.stringify(session));
    } catch (e) {
      /* private mode: the session lasts as long as the page */
    }
  }

  function api(path, options) {
    options = options || {};
    var headers = { "Content-Type": "application/json" };
    if (session) {
      headers.Authorization = "Bearer " + session.token;
    }
    return fetch(base + path, {
      method: options.method || "GET",
      headers: headers,
      body: options.body ? JSON.stringify(options.body) : undefined,
      mode: "cors",
      credentials: "omit"
    });
  }

  function start() {
    if (!starting) {
      starting = begin().catch(function () {
        starting = null;
        host.setAttribute("data-state", "unavailable");
        showStatus(t.unavailable);
      });
    }
    return starting;
  }

  async function begin() {
    session = load();
    if (!session) {
      var created = await api("/v1/webchat/sessions", { method: "POST" });
      if (!created.ok) {
        throw new Error("session: HTTP " + created.status);
      }
      session = await created.json();
      session.last_event_id = "";
      save();
    }
    var history = await api("/v1/webchat/sessions/" + encodeURIComponent(session.session_id) + "/messages");
    if (history.status === 401) {
      // Expired or from another deployment: a new session.
      localStorage.removeItem(storeKey);
      session = null;
      return begin();
    }
    if (history.ok) {
      var body = await history.json();
      (body.messages || []).forEach(function (m) {
        if (m.role === "user") {
          showUser(m.message_id, m.text, false);
        } else {
          showAgent(m.message_id, m.text, false);
        }
      });
    }
    host.setAttribute("data-state", "ready");
    connect();
  }

  // ---- Live events ----
  var source = null;
  var retryDelay = 500;

  function connect() {
    var url = base + "/v1/webchat/sessions/" + encodeURIComponent(session.session_id) +
      "/events?token=" + encodeURIComponent(session.token);
    if (session.last_event_id) {
      url += "&last_event_id=" + encodeURIComponent(session.last_event_id);
    }
    source = new EventSource(url);
    ["ready", "message", "typing", "delta", "reset", "answer", "person", "handover"].forEach(function (type) {
      source.addEventListener(type, function (e) {
        onEvent(type, e);
      });
    });
    source.onerror = function () {
      host.setAttribute("data-state", "reconnecting");
      showStatus(t.reconnecting);
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error): open a new stream from the last event seen.
        source = null;
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 10000);
      }
    };
  }

  function onEvent(type, e) {
    var data = {};
    try {
      data = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (e.lastEventId) {
      session.last_event_id = e.lastEventId;
      save();
    }
    retryDelay = 500;
    host.dispatchEvent(new CustomEvent("clawgate:event", { detail: { id: e.lastEventId, type: type, data: data } }));
    switch (type) {
      case "ready":
        host.setAttribute("data-state", "ready");
        hideStatus();
        break;
      case "message":
        showUser(data.message_id, data.text, false);
        break;
      case "typing":
        // A turn (re)started: text streamed by an earlier attempt of it is void.
        var restarted = agentBubble(data.message_id);
        if (restarted && restarted.classList.contains("streaming")) {
          textOf(restarted).textContent = "";
        }
        typing.hidden = false;
        break;
      case "delta":
        var bubbleNode = agentBubble(data.message_id) || showAgent(data.message_id, "", true);
        if (bubbleNode.classList.contains("streaming")) {
          textOf(bubbleNode).textContent += data.text;
          scrollDown();
        }
        break;
      case "reset":
        var reset = agentBubble(data.message_id);
        if (reset && reset.classList.contains("streaming")) {
          textOf(reset).textContent = "";
        }
        break;
      case "answer":
        typing.hidden = true;
        showAgent(data.message_id, data.text, false);
        break;
      case "person":
        // A person of the team took over the conversation and wrote.
        showAgent(data.message_id, data.text, false);
        break;
      case "handover":
        notice(t.handover.replace("{ref}", data.reference));
        break;
    }
  }

  // ---- Showing messages ----
  function key(role, messageId) {
    return role + ":" + messageId;
  }
  function find(role, messageId) {
    return log.querySelector('[data-key="' + cssEscape(key(role, messageId)) + '"]');
  }
  function cssEscape(s) {
    return window.CSS && window.CSS.escape ? window.CSS.escape(s) : s.replace(/["\\]/g, "\\$&");
  }
  function agentBubble(messageId) {
    return find("agent", messageId);
  }
  function makeMessage(role, messageId, who) {
    var node = el("div", "msg " + role);
    node.setAttribute("data-key", key(role, messageId));
    node.setAttribute("data-message-id", messageId);
    // Screen readers hear who speaks; the text follows.
    var name = el("span", "sr");
    name.textContent = who + ": ";
    node.appendChild(name);
    node.appendChild(el("span", "text"));
    log.appendChild(node);
    return node;
  }
  function textOf(node) {
    return node.querySelector(".text");
  }
  function showUser(messageId, text, pending) {
    var node = find("user", messageId);
    if (!node) {
      node = makeMessage("user", messageId, t.you);
      textOf(node).textContent = text;
    }
    node.classList.toggle("pending", pending);
    scrollDown();
    return node;
  }
  function showAgent(messageId, text, streaming) {
    var node = agentBubble(messageId);
    if (!node) {
      node = makeMessage("agent", messageId, t.agent);
    }
    if (streaming) {
      node.classList.add("streaming");
      // While it streams, screen readers wait for the whole answer.
      node.setAttribute("aria-busy", "true");
    } else {
      textOf(node).textContent = text;
      node.classList.remove("streaming");
      node.setAttribute("aria-busy", "false");
      node.setAttribute("data-final", "true");
    }
    scrollDown();
    return node;
  }
  function notice(text) {
    var node = el("div", "notice");
    node.textContent = text;
    log.appendChild(node);
    scrollDown();
  }
  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }
  function showStatus(text) {
    status.textContent = text;
    status.hidden = false;
  }
  function hideStatus() {
    status.hidden = true;
  }

  // ---- Sending ----
  function newId() {
    if (window.crypto && crypto.randomUUID) {
      return crypto.randomUUID();
    }
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  async function submit(e) {
    if (e) {
      e.preventDefault();
    }
    var text = input.value.trim();
    if (!text) {
      return;
    }
    input.value = "";
    await start();
    if (!session) {
      return;
    }
    var messageId = newId();
    showUser(messageId, text, true);
    typing.hidden = false;
    deliver(messageId, text, 500);
  }

  async function deliver(messageId, text, delay) {
    var response = null;
    try {
      response = await api("/v1/webchat/messages?wait_ms=0", {
        method: "POST",
        body: { session_id: session.session_id, message_id: messageId, text: text, language: lang }
      });
    } catch (err) {
      response = null;
    }
    if (response && (response.ok || response.status === 202)) {
      var node = find("user", messageId);
      if (node) {
        node.classList.remove("pending");
      }
      if (host.getAttribute("data-state") !== "reconnecting") {
        hideStatus();
      }
      return;
    }
    if (response && response.status >= 400 && response.status < 500 && response.status !== 429) {
      showStatus(t.unavailable);
      typing.hidden = true;
      return;
    }
    // Network error, 429 or 5xx: the same id again, so it is accepted at most once.
    showStatus(t.retrying);
    setTimeout(function () {
      deliver(messageId, text, Math.min(delay * 2, 10000));
    }, delay);
  }

  // Last: everything above is defined by now.
  if (document.body) {
    mount();
  } else {
    document.addEventListener("DOMContentLoaded", mount);
  }
})();
