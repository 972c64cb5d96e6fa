// voiceloop's browser page: microphone → WebRTC → the bot, its voice back, its events as a live view.
// Plain JS, no build step. Message formats: voiceloop/serve/session.py. A bearer token, when the
// server wants one, comes from the page address after the #: http://host:port/#token=TOKEN. A fragment
// never reaches the server (no access logs) nor a Referer; the page keeps it for the tab
// (sessionStorage, so a reload works) and takes it out of the address bar.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TOKEN_KEY = "voiceloop-token";

function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();
const auth = token ? { Authorization: `Bearer ${token}` } : {};

// Latency bar segments: TurnMetrics durations (voiceloop/timeline.py), "sent" = queue + buffering.
const SEGMENTS = [
  ["endpointing", "endpointing", "end of speech → endpoint"],
  ["asr", "asr_finalisation", "ASR final"],
  ["handler", "handler_first_text", "handler first text"],
  ["tts", "tts_first_audio", "TTS first audio"],
  ["sent", ["output_queue", "output_buffering"], "sent"],
];
const BAR_SCALE_S = 2.0; // a full bar is at least this long, so bars of different turns compare

// Everything the page knows, also for tests (window.voiceloop).
// gen: which connection is current (a replaced one's handlers check it and go quiet); wanted: the
// user wants the call (false after Disconnect); final: the server ended it for good (no failover).
const state = {
  pc: null, channel: null, mic: null, audioCtx: null, micAnalyser: null, botAnalyser: null,
  meterTimer: null, session: null, events: [], errors: [], botPeak: 0, config: null, status: "idle",
  call: null, gen: 0, wanted: false, final: false, previous: null, watchdog: null, cancelWait: null,
  offers: 0, reconnects: 0, alive: 0, resumed: null, losses: [],
};

function setStatus(text) {
  state.status = text;
  const el = $("status");
  el.textContent = text;
  el.className = `status ${text}`;
}

function showError(message) {
  state.errors.push(message);
  $("errors").textContent = message;
}

async function getJson(path) {
  const response = await fetch(path, { headers: auth });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

// -- voices ---------------------------------------------------------------------------------
function fillVoices(config) {
  const select = $("voice");
  select.replaceChildren();
  const add = (value, label) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    select.append(option);
  };
  const voices = config.voices;
  add("", voices.default ? `default (${voices.default})` : "default (random per session)");
  for (const name of voices.names) add(name, name);
  if (voices.seeds) {
    for (const seed of [1, 2, 3, 42]) add(`seed:${seed}`, `seed:${seed}`);
    add("custom", "seed: custom…");
  }
}

function chosenVoice() {
  const value = $("voice").value;
  if (value === "recording") return undefined; // the server holds it (POST /voice): say nothing
  if (value !== "custom") return value || null;
  const seed = $("seed").value.trim();
  return seed ? `seed:${seed}` : null;
}

function send(message) {
  const channel = state.channel;
  if (!channel || channel.readyState !== "open") {
    showError("not connected");
    return false;
  }
  channel.send(JSON.stringify(message));
  return true;
}

// -- the conversation view ----------------------------------------------------------------
function turnCard(turnId, kind) {
  let card = document.querySelector(`.turn[data-turn="${turnId}"]`);
  if (card) return card;
  card = document.createElement("li");
  card.className = "turn";
  card.dataset.turn = String(turnId);
  const head = document.createElement("div");
  head.className = "head";
  head.textContent = kind === "say" ? `typed · turn ${turnId}` : `turn ${turnId}`;
  const user = document.createElement("div");
  user.className = "user partial";
  const bot = document.createElement("div");
  bot.className = "bot";
  card.append(head, user, bot);
  $("turns").prepend(card);
  while ($("turns").children.length > 50) $("turns").lastElementChild.remove();
  return card;
}

const turnsText = (n) => `${n} earlier turn${n === 1 ? "" : "s"}`;

function resumedCard(turns) {
  const card = document.createElement("li");
  card.className = "turn resumed";
  card.textContent = `reconnected · ${turnsText(turns)} kept`;
  $("turns").prepend(card);
}

function setUser(card, text, final) {
  const user = card.querySelector(".user");
  user.textContent = text;
  user.classList.toggle("partial", !final);
}

function addBotText(card, text) {
  const bot = card.querySelector(".bot");
  bot.textContent = (bot.textContent ? bot.textContent + " " : "") + text;
}

function markInterrupted(card, played) {
  card.classList.add("interrupted");
  const bot = card.querySelector(".bot");
  const said = bot.textContent;
  const heard = played && said.startsWith(played) ? played : "";
  bot.replaceChildren(document.createTextNode(heard));
  const rest = document.createElement("span");
  rest.className = "unheard";
  rest.textContent = said.slice(heard.length);
  bot.append(rest);
}

function latencyBar(card, durations) {
  card.querySelector(".latency")?.remove();
  card.querySelector(".breakdown")?.remove();
  const row = document.createElement("div");
  row.className = "latency";
  const bar = document.createElement("div");
  bar.className = "bar";
  const parts = SEGMENTS.map(([cls, keys, label]) => {
    const values = [].concat(keys).map((k) => durations[k]).filter((v) => typeof v === "number");
    return [cls, values.length ? values.reduce((a, b) => a + b, 0) : null, label];
  }).filter(([, value]) => value !== null);
  const total = parts.reduce((sum, [, value]) => sum + Math.max(0, value), 0);
  const scale = Math.max(BAR_SCALE_S, total);
  for (const [cls, value, label] of parts) {
    const seg = document.createElement("span");
    seg.className = `seg ${cls}`;
    seg.style.width = `${(100 * Math.max(0, value)) / scale}%`;
    seg.title = `${label}: ${Math.round(value * 1000)} ms`;
    bar.append(seg);
  }
  const v2v = durations.voice_to_voice;
  const label = document.createElement("span");
  label.className = "total";
  label.textContent = typeof v2v === "number"
    ? `voice to voice ${ms(v2v)} ms`
    : `text to sent ${ms(total)} ms`;
  const breakdown = document.createElement("div");
  breakdown.className = "breakdown";
  breakdown.textContent = parts.map(([, value, name]) => `${name} ${ms(value)}`).join(" · ") + " ms";
  row.append(bar, label);
  card.append(row, breakdown);
}

function ms(seconds) {
  return Math.round(seconds * 1000);
}

function onEvent(event) {
  if (event.type === "alive") {
    state.alive += 1; // liveness only (the watch is re-armed by every message)
    return;
  }
  state.events.push(event);
  if (state.events.length > 2000) state.events.splice(0, 1000);
  panelEvent(event); // the text-to-speech panel's view (panel.js)
  const id = event.turn_id;
  switch (event.type) {
    case "session":
      state.session = event.session;
      $("session").textContent = `session ${event.session}`;
      break;
    case "speech_started":
      turnCard(id, "user");
      break;
    case "speech_ended":
      if (event.discarded) document.querySelector(`.turn[data-turn="${id}"]`)?.remove();
      break;
    case "partial":
      setUser(turnCard(id, "user"), event.text, false);
      break;
    case "final":
      setUser(turnCard(id, "user"), event.text || "(nothing recognised)", true);
      break;
    case "say":
      setUser(turnCard(id, "say"), "", true);
      break;
    case "reply_text":
      addBotText(turnCard(id, id >= 1000000 ? "say" : "user"), event.text);
      break;
    case "interruption":
      if (id >= 0) markInterrupted(turnCard(id, "user"), event.played_text);
      break;
    case "turn_error": {
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = `${event.stage}: ${event.error}`;
      turnCard(id, "user").append(err);
      break;
    }
    case "turn":
      if (event.text || event.reply) latencyBar(turnCard(id, event.text ? "user" : "say"), event.durations);
      break;
    case "voice":
      break;
    case "error":
      showError(event.request ? `${event.request}: ${event.error}` : event.error);
      break;
    case "resumed":
      state.resumed = event;
      resumedCard(event.turns);
      notice(`Reconnected: the conversation is kept (${turnsText(event.turns)})`);
      break;
    case "closing":
      // a silent microphone is not fixed by offering again; other ends (a worker going away) are
      if (event.resume === false || /no audio/i.test(event.reason || "")) {
        state.final = true;
        showError(`server closed the session: ${event.reason}`);
      } else notice(`The server ended this connection (${event.reason}): reconnecting…`);
      break;
  }
}

// -- audio levels ---------------------------------------------------------------------------
function rms(analyser) {
  if (!analyser) return 0;
  const data = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(data);
  let sum = 0;
  for (const x of data) sum += x * x;
  return Math.sqrt(sum / data.length);
}

function meters() {
  const mic = rms(state.micAnalyser);
  const bot = rms(state.botAnalyser);
  state.botPeak = Math.max(state.botPeak, bot);
  $("mic-level").style.width = `${Math.min(100, mic * 400)}%`;
  $("bot-level").style.width = `${Math.min(100, bot * 400)}%`;
}

function analyser(stream) {
  const node = state.audioCtx.createAnalyser();
  node.fftSize = 1024;
  state.audioCtx.createMediaStreamSource(stream).connect(node);
  return node;
}

function say() {
  const text = $("say-text").value.trim();
  if (!text) return;
  if (send({ type: "say", text, voice: chosenVoice() })) $("say-text").value = "";
}

async function stats() {
  // inbound-rtp of the bot's audio: what tests (and the curious) read to see the bot was heard
  const out = { totalSamplesReceived: 0, packetsReceived: 0, audioLevel: 0, botPeak: state.botPeak };
  if (!state.pc) return out;
  const report = await state.pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.totalSamplesReceived = s.totalSamplesReceived || 0;
      out.packetsReceived = s.packetsReceived || 0;
      out.audioLevel = s.audioLevel || 0;
    }
  });
  return out;
}

async function init() {
  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", disconnect);
  $("say").addEventListener("click", say);
  $("say-text").addEventListener("keydown", (e) => { if (e.key === "Enter") say(); });
  $("voice").addEventListener("change", () => {
    $("seed").hidden = $("voice").value !== "custom";
    if ($("voice").value === "recording") panelOnOpen(); // send the kept recording again
    else if ($("voice").value !== "custom") send({ type: "voice", voice: chosenVoice() });
  });
  $("seed").addEventListener("change", () => send({ type: "voice", voice: chosenVoice() }));
  window.addEventListener("pagehide", disconnect);
  if (params.has("token")) showError("the token goes after # in the address (/#token=…), not after ?");
  try {
    state.config = await getJson("config");
    $("say-text").maxLength = state.config.max_say_chars;
    fillVoices(state.config);
    initPanel(state.config);
  } catch (error) {
    showError(String(error.message || error));
  }
  document.body.dataset.ready = "1";
  if (params.get("autoconnect") === "1") connect();
}

window.voiceloop = { state, connect, disconnect, say, stats, send };
init();
