// voiceloop's browser page, its text-to-speech panel: this session's synthesis settings (seed roll,
// temperature / top-P / top-K, refine and its prompt), the refined text, a download of what the bot
// said per turn, and a voice from a recording (mic or file → POST /voice). Loaded before app.js and
// sharing its globals (state, $, send, turnCard, auth, ...). Formats: voiceloop/serve/tts_panel.py and
// voiceloop/serve/voice_upload.py. Everything here is this tab's: nothing reaches another caller.
"use strict";

const KNOBS = ["temperature", "top_p", "top_k", "refine", "refine_prompt"];
const REFINE_PROMPT = /^(\[(oral_[0-9]|laugh_[0-2]|break_[0-7])\])*$/;
const UPLOAD_RATE = 24000; // what a recording is sent at (ChatTTS's rate): 30 s stay under 2 MB
const TAIL_MS = 600; // a turn's audio still in the jitter buffer after its "turn" event
const KEEP_TURNS = 20; // downloads kept (older ones are released)

const panel = {
  supported: [], defaults: {}, changed: {}, upload: null, lastRecording: null, applied: null,
  capture: null, pending: null, captures: new Map(), tapStop: null, recorder: null, refined: [], downloads: 0,
};

// -- settings -------------------------------------------------------------------------------
function knobInput(knob) {
  return $(`tts-${knob}`);
}

function knobValue(knob) {
  const input = knobInput(knob);
  if (knob === "refine") return input.checked;
  if (knob === "refine_prompt") return input.value.trim();
  return Number(input.value);
}

function showKnob(knob, value) {
  const input = knobInput(knob);
  if (knob === "refine") input.checked = Boolean(value);
  else input.value = value ?? "";
  const out = input.parentElement.querySelector("output");
  if (out) out.textContent = input.value;
}

function initPanel(config) {
  const voices = config.voices || {};
  panel.supported = config.tts?.settings || [];
  panel.defaults = config.tts?.defaults || {};
  panel.upload = config.voice_upload || null;
  $("seed-roll").hidden = !voices.seeds;
  for (const knob of KNOBS) {
    const row = document.querySelector(`[data-knob="${knob}"]`);
    row.hidden = !panel.supported.includes(knob);
    if (row.hidden) continue;
    showKnob(knob, panel.defaults[knob]);
    knobInput(knob).addEventListener("change", () => changeKnob(knob));
    knobInput(knob).addEventListener("input", () => showKnob(knob, knobValue(knob)));
  }
  $("tts-settings").hidden = !panel.supported.length && !voices.seeds;
  $("tts-reset").hidden = !panel.supported.length;
  $("seed-roll").addEventListener("click", rollSeed);
  $("tts-reset").addEventListener("click", resetKnobs);
  $("voice-clone").hidden = !panel.upload;
  if (panel.upload) {
    $("voice-save").hidden = !panel.upload.save;
    $("record").addEventListener("click", toggleRecording);
    $("voice-file").addEventListener("change", uploadFile);
  }
}

function changeKnob(knob) {
  const value = knobValue(knob);
  if (knob === "refine_prompt" && !REFINE_PROMPT.test(value)) {
    showError("refine prompt: only tags like [oral_2][laugh_0][break_6]");
    return;
  }
  panel.changed[knob] = knob === "refine_prompt" && !value ? null : value;
  send({ type: "tts", [knob]: panel.changed[knob] });
}

function resetKnobs() {
  const reset = {};
  for (const knob of panel.supported) {
    reset[knob] = null;
    showKnob(knob, panel.defaults[knob]);
  }
  panel.changed = {};
  send({ type: "tts", ...reset });
}

function rollSeed() {
  const seed = Math.floor(Math.random() * 100000000); // as ChatTTS's web UI rolls them
  $("voice").value = "custom";
  $("seed").hidden = false;
  $("seed").value = String(seed);
  send({ type: "voice", voice: `seed:${seed}` });
}

// A new session (first connect, failover) starts at the defaults: give it this tab's choices again.
function panelOnOpen() {
  if (Object.keys(panel.changed).length) send({ type: "tts", ...panel.changed });
  if ($("voice").value === "recording" && panel.lastRecording) postVoice(panel.lastRecording);
}

// -- events ---------------------------------------------------------------------------------
function panelEvent(event) {
  const id = event.turn_id;
  switch (event.type) {
    case "tts":
      panel.applied = event.settings;
      break;
    case "refined": {
      panel.refined.push(event);
      const card = turnCard(id, id >= 1000000 ? "say" : "user");
      const line = card.querySelector(".refined") || document.createElement("div");
      line.className = "refined";
      line.textContent = `refined: ${event.refined}`;
      card.querySelector(".bot").after(line);
      break;
    }
    case "reply_text": // the bot speaks one turn at a time: a later one waits for the current one's end
      if (!panel.capture) startCapture(id);
      else if (panel.capture.turn !== id) panel.pending = id;
      break;
    case "turn":
    case "interruption":
      if (panel.capture?.turn === id) setTimeout(() => endCapture(id), TAIL_MS);
      break;
  }
}

// -- what the bot said, per turn --------------------------------------------------------------
// The bot's track through a ScriptProcessor (a worklet would need another module file): samples
// go to the turn being spoken, from its first text until a moment after its "turn" event.
function tap(stream, onSamples) {
  const ctx = state.audioCtx;
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.onaudioprocess = (e) => onSamples(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(mute);
  mute.connect(ctx.destination); // a processor runs only when connected to the output
  return () => { source.disconnect(); node.disconnect(); mute.disconnect(); };
}

function captureBot(stream) {
  panel.tapStop?.();
  panel.tapStop = tap(stream, (samples) => {
    const capture = panel.capture;
    if (capture && capture.length < state.audioCtx.sampleRate * 120) {
      capture.chunks.push(samples);
      capture.length += samples.length;
    }
  });
}

function startCapture(turn) {
  panel.pending = null;
  panel.capture = { turn, chunks: [], length: 0, rate: state.audioCtx?.sampleRate || 48000 };
}

function endCapture(turn) {
  const capture = panel.capture;
  if (!capture || capture.turn !== turn) return;
  panel.capture = null;
  if (panel.pending !== null) startCapture(panel.pending);
  const samples = trim(join(capture.chunks, capture.length));
  if (!samples.length) return;
  const card = document.querySelector(`.turn[data-turn="${turn}"]`);
  if (!card) return;
  const old = panel.captures.get(card);
  if (old) URL.revokeObjectURL(old);
  const url = URL.createObjectURL(wavBlob(samples, capture.rate));
  panel.captures.set(card, url);
  while (panel.captures.size > KEEP_TURNS) {
    const [first, href] = panel.captures.entries().next().value;
    URL.revokeObjectURL(href);
    first.querySelector("a.download")?.remove();
    panel.captures.delete(first);
  }
  const link = card.querySelector("a.download") || document.createElement("a");
  link.className = "download";
  link.href = url;
  link.download = `voiceloop-turn-${turn}.wav`;
  link.textContent = `download (${(samples.length / capture.rate).toFixed(1)} s)`;
  card.querySelector(".head").append(link);
  panel.downloads += 1;
}

function join(chunks, length) {
  const out = new Float32Array(length);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

function trim(samples) {
  const loud = (x) => Math.abs(x) > 1e-4;
  const start = samples.findIndex(loud);
  if (start < 0) return new Float32Array(0);
  let end = samples.length;
  while (end > start && !loud(samples[end - 1])) end -= 1;
  return samples.subarray(start, end);
}

function wavBlob(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new Blob([view], { type: "audio/wav" });
}

// -- a voice from a recording ---------------------------------------------------------------
async function toggleRecording() {
  if (panel.recorder) {
    panel.recorder.stop();
    return;
  }
  if (!state.mic || !state.call) {
    showError("connect first: the recording becomes this call's voice");
    return;
  }
  const chunks = [];
  let length = 0;
  const rate = state.audioCtx.sampleRate;
  const limit = rate * Math.min(20, panel.upload.max_seconds - 1);
  const stopTap = tap(state.mic, (samples) => {
    chunks.push(samples);
    length += samples.length;
    if (length >= limit) panel.recorder?.stop();
  });
  $("record").textContent = "■ Stop";
  panel.recorder = {
    stop: async () => {
      stopTap();
      panel.recorder = null;
      $("record").textContent = "● Record voice";
      const samples = await resample(join(chunks, length), rate, UPLOAD_RATE);
      await postVoice({ blob: wavBlob(samples, UPLOAD_RATE), transcript: $("voice-transcript").value.trim() });
    },
  };
}

async function resample(samples, from, to) {
  if (from === to || !samples.length) return samples;
  const offline = new OfflineAudioContext(1, Math.ceil((samples.length * to) / from), to);
  const buffer = offline.createBuffer(1, samples.length, from);
  buffer.copyToChannel(samples, 0);
  const source = offline.createBufferSource();
  source.buffer = buffer;
  source.connect(offline.destination);
  source.start();
  return (await offline.startRendering()).getChannelData(0);
}

async function uploadFile() {
  const file = $("voice-file").files[0];
  if (!file) return;
  if (!state.call) {
    showError("connect first: the recording becomes this call's voice");
    return;
  }
  await postVoice({ blob: file, transcript: $("voice-transcript").value.trim() });
  $("voice-file").value = "";
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let at = 0; at < bytes.length; at += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  }
  return btoa(text);
}

async function postVoice(recording) {
  if (recording.blob.size > panel.upload.max_bytes) {
    showError(`voice: the file is over ${panel.upload.max_bytes} bytes`);
    return null;
  }
  const body = { call: state.call, audio: base64(await recording.blob.arrayBuffer()) };
  if (recording.transcript) body.transcript = recording.transcript;
  const save = $("voice-save").hidden ? "" : $("voice-save").value.trim();
  if (save) body.save = save;
  $("voice-status").textContent = "making a voice of the recording…";
  const response = await fetch("voice", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...auth },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("voice-status").textContent = "";
    showError(`voice: ${answer.error || `HTTP ${response.status}`}`);
    return null;
  }
  panel.lastRecording = save ? null : recording;
  const value = answer.saved || "recording";
  if (![...$("voice").options].some((o) => o.value === value)) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = answer.saved || "my recording";
    $("voice").append(option);
  }
  $("voice").value = value;
  $("seed").hidden = true;
  const heard = answer.transcript_from === "asr" ? " (heard by the ASR)" : "";
  const warn = answer.warnings?.length ? ` — ${answer.warnings.join("; ")}` : "";
  $("voice-status").textContent = `voice: ${answer.seconds} s, "${answer.transcript}"${heard}${warn}`;
  return answer;
}

window.voiceloopPanel = panel;
