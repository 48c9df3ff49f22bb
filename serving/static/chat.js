// The chat page: conversation state, streaming a reply over SSE, stopping it, errors in words.
import { ApiError, apiFetch, describeError, errorFromResponse, mountKeyField, statusOfType } from "/static/api.js";
import { renderMarkdown } from "/static/markdown.js";
import { SSEParser } from "/static/sse.js";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), prompt: $("prompt"), send: $("send"), stop: $("stop"), messages: $("messages"),
  empty: $("empty"), notice: $("notice"), maxTokens: $("max-tokens"), temperature: $("temperature"),
  key: $("api-key"), newChat: $("new-chat"), composer: $("composer"),
};
const SETTINGS = "tide.chatSettings";
const history = [];   // what the next request sends: finished (or stopped) turns only
let controller = null;
let chatId = 0;       // bumped by "New chat", so a reply that ends afterwards is not added to the new chat

function notice(text) {
  els.notice.textContent = text || "";
  els.notice.hidden = !text;
}

function bubble(role) {
  els.empty.hidden = true;
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  div.append(body, meta);
  els.messages.append(div);
  return div;
}

function scrollDown() {
  window.scrollTo({ top: document.body.scrollHeight });
}

async function loadModels() {
  try {
    const r = await apiFetch("/v1/models");
    if (!r.ok) throw await errorFromResponse(r);
    const ids = (await r.json()).data.map((m) => m.id);
    const keep = els.model.value || localStorage.getItem("tide.model");
    els.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(keep)) els.model.value = keep;
    if (!ids.length) notice("This server serves no models.");
    else notice("");
  } catch (e) {
    els.model.replaceChildren(new Option("(no models)", ""));
    notice(e instanceof ApiError ? e.message : `Could not reach Tide: ${e.message}`);
  }
}

function requestBody(model, messages) {
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = parseInt(els.maxTokens.value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const temperature = parseFloat(els.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  return body;
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.model.disabled = busy;
}

/** Stream one reply into `msg`; resolves to the final state: done, stopped or error. */
async function streamReply(msg, model, messages) {
  const body = msg.querySelector(".body");
  const meta = msg.querySelector(".meta");
  let text = "", usage = null, finish = null, firstAt = null, pending = false;
  const t0 = performance.now();
  const paint = () => {
    pending = false;
    body.replaceChildren(renderMarkdown(text));
    msg.dataset.chars = String(text.length);
    scrollDown();
  };
  const append = (delta) => {
    if (!delta) return;
    if (firstAt === null) { firstAt = performance.now(); meta.textContent = ""; }
    text += delta;
    if (!pending) { pending = true; requestAnimationFrame(paint); }
  };
  const summary = (state) => {
    const parts = [];
    if (state === "stopped") parts.push("stopped");
    if (usage?.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
    if (firstAt !== null) parts.push(`first token ${Math.round(firstAt - t0)} ms`);
    const secs = (performance.now() - (firstAt ?? t0)) / 1000;
    if (usage?.completion_tokens > 1 && secs > 0) parts.push(`${(usage.completion_tokens / secs).toFixed(0)} tokens/s`);
    if (finish === "length") parts.push("cut at max tokens");
    meta.textContent = parts.join(" · ");
  };
  const fail = (err) => {
    msg.classList.add("error");
    const p = document.createElement("p");
    p.className = "error-text";
    p.textContent = err.message;
    body.append(p);
    if (err.detail && err.detail !== err.message) meta.textContent = err.detail;
    return { state: "error", text };
  };

  controller = new AbortController();
  try {
    const response = await apiFetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(model, messages)), signal: controller.signal,
    });
    if (!response.ok) return fail(await errorFromResponse(response, model));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser();
    for (;;) {
      const { done, value } = await reader.read();
      const events = done ? parser.end() : parser.feed(decoder.decode(value, { stream: true }));
      for (const ev of events) {
        if (ev.type === "comment") {
          if (firstAt === null && ev.text) meta.textContent = `Model “${model}” is starting — ${ev.text}…`;
          continue;
        }
        if (ev.data === "[DONE]") { paint(); summary("done"); return { state: "done", text }; }
        let chunk;
        try { chunk = JSON.parse(ev.data); } catch { continue; }
        if (chunk.error) { paint(); return fail(describeError(statusOfType(chunk.error.type), chunk.error, null, model)); }
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          append(choice.delta?.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      if (done) break;
    }
    paint();
    return fail(new ApiError("The answer ended early: the connection closed before the server finished."));
  } catch (e) {
    paint();
    if (e.name === "AbortError") { summary("stopped"); return { state: "stopped", text }; }
    return fail(new ApiError(`Could not reach Tide: ${e.message}`));
  } finally {
    controller = null;
  }
}

async function send() {
  const content = els.prompt.value.trim();
  const model = els.model.value;
  if (!content || controller) return;
  if (!model) { notice("Pick a model first."); return; }
  notice("");
  els.prompt.value = "";
  const user = bubble("user");
  user.querySelector(".body").textContent = content;  // the user's own words, shown exactly as typed
  const msg = bubble("assistant");
  msg.dataset.state = "streaming";
  msg.dataset.chars = "0";
  msg.querySelector(".meta").textContent = "…";
  scrollDown();
  setBusy(true);
  const messages = [...history, { role: "user", content }];
  const id = chatId;
  const result = await streamReply(msg, model, messages);
  msg.dataset.state = result.state;
  if (id !== chatId) { setBusy(false); return; }
  if (result.state !== "error") history.push(messages.at(-1), { role: "assistant", content: result.text });
  else user.classList.add("unsent");  // not part of the conversation the model sees next time
  setBusy(false);
  els.prompt.focus();
}

function saveSettings() {
  localStorage.setItem(SETTINGS, JSON.stringify({ maxTokens: els.maxTokens.value, temperature: els.temperature.value }));
}

function init() {
  try {
    const s = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
    els.maxTokens.value = s.maxTokens ?? "";
    els.temperature.value = s.temperature ?? "";
  } catch { /* ignore a bad saved value */ }
  els.maxTokens.addEventListener("change", saveSettings);
  els.temperature.addEventListener("change", saveSettings);
  els.model.addEventListener("change", () => localStorage.setItem("tide.model", els.model.value));
  mountKeyField(els.key, loadModels);
  els.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  els.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  els.stop.addEventListener("click", () => controller?.abort());
  const settings = document.querySelector(".settings");
  document.addEventListener("click", (e) => { if (!settings.contains(e.target)) settings.open = false; });
  els.newChat.addEventListener("click", () => {
    controller?.abort();
    chatId++;
    history.length = 0;
    els.messages.replaceChildren(els.empty);
    els.empty.hidden = false;
  });
  loadModels();
}

init();
