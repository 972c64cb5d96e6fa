// voiceloop's browser page, its call: the peer connection to the bot, waiting for a free line, and
// failover. Loaded before app.js and sharing its globals (state, $, onEvent, ...): plain scripts,
// no build step. Protocol: voiceloop/serve/server.py (/offer, /config), voiceloop/serve/peers.py
// (heartbeat, resumed, closing).
"use strict";

// A call outlives its peer connection. The answer names it (`call`: kept in memory only, it reads
// the conversation back); when the connection is lost (no event for failover_after_s, or the channel
// or connection ends without the user asking) the page offers again with that id and the new session
// starts with the earlier turns. A full server (503) or a rate limit (429) says Retry-After: the page
// waits that long, plus jitter, and offers again until it is admitted or the user cancels.
const CONNECT_WAIT_S = 15; // an answered offer whose events channel says nothing this long is lost
const UNREACHABLE_GIVE_UP_S = 60; // a lost call whose server cannot be reached this long is over
const JITTER = 0.2; // up to this fraction of Retry-After on top, so waiting pages do not retry in step

function notice(text) {
  $("notice").textContent = text;
}

function waitForGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have: aiortc takes no trickled candidates
  });
}

// Wait `seconds` with a countdown in the notice; false when the user cancelled meanwhile.
function pause(seconds, label) {
  const end = performance.now() + seconds * 1000;
  return new Promise((resolve) => {
    const finish = (go) => {
      clearInterval(timer);
      state.cancelWait = null;
      resolve(go);
    };
    const tick = () => {
      const left = end - performance.now();
      if (left <= 0) finish(state.wanted);
      else notice(label(Math.ceil(left / 1000)));
    };
    const timer = setInterval(tick, 200);
    state.cancelWait = () => finish(false);
    tick();
  });
}

function retryAfter(response) {
  const seconds = Number(response.headers.get("Retry-After")); // cross-origin: needs Expose-Headers
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 300) : 2;
}

// Re-arm the liveness watch: any message on the events channel counts (heartbeats included).
function watch(gen, seconds) {
  clearTimeout(state.watchdog);
  if (seconds) state.watchdog = setTimeout(() => lost(gen, `nothing heard for ${seconds} s`), seconds * 1000);
}

function openPeer(gen) {
  const pc = (state.pc = new RTCPeerConnection({ iceServers: state.config ? state.config.ice_servers : [] }));
  const channel = (state.channel = pc.createDataChannel("events"));
  const mine = () => gen === state.gen; // a replaced connection's handlers go quiet
  channel.onmessage = (message) => {
    if (!mine()) return;
    watch(gen, state.config?.failover_after_s);
    onEvent(JSON.parse(message.data));
  };
  channel.onopen = () => {
    if (!mine()) return;
    $("say").disabled = false;
    if (chosenVoice()) send({ type: "voice", voice: chosenVoice() }); // a new session: the default voice
    panelOnOpen(); // and the default settings
  };
  channel.onclose = () => mine() && lost(gen, "the events channel closed");
  for (const track of state.mic.getAudioTracks()) pc.addTrack(track, state.mic);
  pc.ontrack = (event) => {
    if (!mine()) return;
    const stream = event.streams[0] || new MediaStream([event.track]);
    const audio = $("bot-audio") || Object.assign(document.createElement("audio"), { id: "bot-audio" });
    audio.autoplay = true;
    audio.srcObject = stream; // Chrome renders remote WebRTC audio only through a media element
    document.body.append(audio);
    audio.play().catch(() => {});
    state.botAnalyser = analyser(stream);
    captureBot(stream); // per-turn downloads (panel.js)
  };
  pc.onconnectionstatechange = () => {
    if (!mine()) return;
    const back = state.status === "reconnecting" && pc.connectionState === "connected";
    if (pc.connectionState === "failed") lost(gen, "the connection failed");
    else if (state.status !== "reconnecting" || back) setStatus(pc.connectionState);
    if (back && !state.resumed) notice("Reconnected"); // "resumed" says more when there were turns
  };
  return pc;
}

// One leg of the call: a peer connection, offered (with the call id when there is one) until admitted.
async function dial(resuming) {
  const gen = ++state.gen;
  const since = performance.now();
  const pc = openPeer(gen);
  await pc.setLocalDescription(await pc.createOffer());
  await waitForGathering(pc, 3000);
  const prefix = resuming ? "Reconnecting… (the conversation is kept) — " : "";
  for (;;) {
    if (gen !== state.gen) return;
    const offer = { sdp: pc.localDescription.sdp, type: "offer" };
    if (state.call) offer.call = state.call;
    let response;
    state.offers += 1;
    try {
      response = await fetch("offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...auth },
        body: JSON.stringify(offer),
      });
    } catch (error) {
      // a lost call's server may be restarting: keep trying a while; a first connect just fails
      if (!resuming || performance.now() - since > UNREACHABLE_GIVE_UP_S * 1000) throw error;
      if (!(await pause(1 + Math.random(), (n) => `${prefix}server unreachable, retrying in ${n} s`))) return;
      continue;
    }
    closeLeg(state.previous); // the server has ended the old leg's session by now (it keeps the turns)
    state.previous = null;
    const answer = await response.json().catch(() => ({}));
    if (gen !== state.gen) return;
    if (response.status === 503 || response.status === 429) {
      setStatus("waiting");
      $("disconnect").textContent = "Cancel";
      const what = response.status === 503 ? "All lines are busy" : "Too many tries";
      const wait = retryAfter(response) * (1 + JITTER * Math.random());
      if (!(await pause(wait, (n) => `${prefix}${what} — retrying in ${n} s`))) return;
      continue;
    }
    if (!response.ok) throw new Error(answer.error || `offer refused: HTTP ${response.status}`);
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    state.call = answer.call;
    $("disconnect").textContent = "Disconnect";
    if (!resuming) notice("");
    if (state.status === "waiting") setStatus(resuming ? "reconnecting" : pc.connectionState);
    watch(gen, state.config?.failover_after_s && Math.max(CONNECT_WAIT_S, state.config.failover_after_s));
    return;
  }
}

function closeLeg(leg) {
  leg?.channel?.close();
  leg?.pc?.close();
}

// The connection is gone but the user did not hang up: offer again with the call id.
async function lost(gen, why) {
  if (gen !== state.gen || !state.wanted) return;
  state.gen += 1; // the old leg's handlers go quiet
  state.losses.push(why);
  state.resumed = null;
  clearTimeout(state.watchdog);
  $("say").disabled = true;
  if (state.final || !state.call) {
    if (!state.final) showError(`connection lost: ${why}`);
    disconnect();
    return;
  }
  // the old leg stays open until the server answers the new offer: closing its channel first would
  // read as a hang-up there (and drop the checkpoint) when the server is alive but slow
  closeLeg(state.previous);
  state.previous = { pc: state.pc, channel: state.channel };
  state.reconnects += 1;
  retireTurns();
  setStatus("reconnecting");
  notice(`Reconnecting… (the conversation is kept): ${why}`);
  try {
    await dial(true);
  } catch (error) {
    showError(String(error.message || error));
    disconnect();
    setStatus("failed");
  }
}

// Turn ids start again in every session: the earlier cards keep their text but leave the numbering.
function retireTurns() {
  for (const card of document.querySelectorAll(".turn[data-turn]")) {
    card.dataset.earlier = card.dataset.turn;
    delete card.dataset.turn;
  }
}

async function connect() {
  $("connect").disabled = true;
  $("disconnect").disabled = false; // it also cancels a wait for a free line
  $("errors").textContent = "";
  notice("");
  setStatus("connecting");
  Object.assign(state, { wanted: true, final: false, call: null });
  try {
    state.audioCtx = new AudioContext();
    state.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    state.micAnalyser = analyser(state.mic);
    state.meterTimer = setInterval(meters, 50);
    if (state.wanted) await dial(false);
  } catch (error) {
    showError(String(error.message || error));
    disconnect();
    setStatus("failed");
  }
}

function disconnect() {
  state.wanted = false;
  state.gen += 1;
  state.cancelWait?.();
  clearTimeout(state.watchdog);
  clearInterval(state.meterTimer);
  closeLeg(state.previous);
  // "bye" is the hang-up: the server forgets the call (a connection closing without it may be a
  // failover); the leg closes a moment later so that the message leaves first
  const leg = { pc: state.pc, channel: state.channel };
  if (leg.channel?.readyState === "open") {
    leg.channel.send(JSON.stringify({ type: "bye" }));
    setTimeout(() => closeLeg(leg), 200);
  } else {
    closeLeg(leg);
  }
  state.mic?.getTracks().forEach((track) => track.stop());
  state.audioCtx?.close();
  Object.assign(state, {
    pc: null, channel: null, previous: null, mic: null, audioCtx: null, micAnalyser: null, botAnalyser: null,
    call: null,
  });
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  $("disconnect").textContent = "Disconnect";
  $("say").disabled = true;
  notice("");
  const live = ["connected", "connecting", "new", "waiting", "reconnecting", "disconnected"];
  if (live.includes(state.status)) setStatus("closed");
  meters();
}
