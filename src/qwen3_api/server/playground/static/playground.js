// The qwen3-api playground: a chat over this server's own /v1/chat/completions, streamed as server-sent events.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "qwen3-api.api-key";

const EXAMPLE_SCHEMA = {
  name: "city",
  schema: {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 40 },
      country: { type: "string", maxLength: 40 },
      population: { type: "integer" },
    },
    required: ["name", "country", "population"],
    additionalProperties: false,
  },
};
const EXAMPLE_TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather of a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 40 }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["city"],
      additionalProperties: false,
    },
  },
}];

const state = {
  messages: [],        // the conversation sent to the server: {role, content, tool_calls?}
  controller: null,    // AbortController of the request in flight
  model: null,
};

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- server status and model ------------------------------------------------------------------------------------
function setStatus(kind, text) {
  const pill = $("server-status");
  pill.dataset.state = kind;
  pill.textContent = text;
}

async function refreshStatus() {
  try {
    const status = await (await fetch("/playground/status")).json();
    if (status.state === "loading") {
      setStatus("loading", `loading ${status.model}…`);
      setTimeout(refreshStatus, 500);
      return;
    }
    if (status.state === "failed") {
      setStatus("error", "model failed to load");
      showError(`the server could not load ${status.model}: ${status.error}`);
      return;
    }
    const models = await fetch("/v1/models", { headers: authHeaders() });
    if (!models.ok) {
      setStatus("error", `/v1/models: HTTP ${models.status}`);
      showError(errorMessage(models.status, await models.text()));
      return;
    }
    const body = await models.json();
    state.model = body.data && body.data.length ? body.data[0].id : null;
    $("model-name").textContent = state.model || "no model";
    setStatus("ready", "ready");
  } catch (err) {
    setStatus("error", "server unreachable");
    setTimeout(refreshStatus, 2000);
  }
}

// ---- conversation rendering -------------------------------------------------------------------------------------
function addBubble(role) {
  const bubble = document.createElement("div");
  bubble.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  bubble.appendChild(label);
  $("conversation").appendChild(bubble);
  return bubble;
}

function addText(bubble, className, text) {
  const node = document.createElement("div");
  node.className = className;
  node.textContent = text;
  bubble.appendChild(node);
  return node;
}

function scrollDown() {
  const box = $("conversation");
  box.scrollTop = box.scrollHeight;
}

function showError(text) {
  const bubble = addBubble("error");
  addText(bubble, "error-text", text);
  scrollDown();
}

// The text of an error response: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the raw body.
function errorMessage(status, bodyText) {
  let detail = bodyText;
  try {
    const body = JSON.parse(bodyText);
    if (body.error) detail = typeof body.error === "string" ? body.error : body.error.message || JSON.stringify(body.error);
    else if (body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON: show it as it came */ }
  return `HTTP ${status}: ${detail}`;
}

// ---- the request ------------------------------------------------------------------------------------------------
function numberField(id, parse) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : parse(raw);
}

function buildRequest() {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.messages);
  const body = {
    model: state.model || "default",
    messages,
    stream: true,
    stream_options: { include_usage: true },
    enable_thinking: $("thinking").checked,
  };
  const fields = {
    temperature: numberField("temperature", parseFloat),
    top_p: numberField("top-p", parseFloat),
    top_k: numberField("top-k", (v) => parseInt(v, 10)),
    max_tokens: numberField("max-tokens", (v) => parseInt(v, 10)),
    seed: numberField("seed", (v) => parseInt(v, 10)),
  };
  for (const [name, value] of Object.entries(fields)) if (value !== undefined) body[name] = value;
  const mode = $("mode").value;
  if (mode === "json") body.response_format = { type: "json_schema", json_schema: JSON.parse($("json-schema").value) };
  if (mode === "tools") {
    body.tools = JSON.parse($("tools").value);
    body.tool_choice = $("tool-choice").value;
  }
  return body;
}

// Yields each `data:` payload of a server-sent event stream, across arbitrary chunk boundaries.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

class AnswerView {
  constructor() {
    this.bubble = addBubble("assistant");
    this.thinking = null;
    this.reasoningNode = null;
    this.contentNode = addText(this.bubble, "content", "");
    this.toolNode = null;
    this.content = "";
    this.reasoning = "";
    this.toolCalls = [];
  }

  addReasoning(text) {
    if (!this.thinking) {
      this.thinking = document.createElement("details");
      this.thinking.className = "thinking";
      this.thinking.open = true;
      const summary = document.createElement("summary");
      summary.textContent = "thinking…";
      this.thinking.appendChild(summary);
      this.reasoningNode = document.createElement("div");
      this.reasoningNode.className = "reasoning";
      this.thinking.appendChild(this.reasoningNode);
      this.bubble.insertBefore(this.thinking, this.contentNode);
    }
    this.reasoning += text;
    this.reasoningNode.textContent = this.reasoning;
  }

  // Folds the thinking block away once the answer begins (a click opens it again).
  closeThinking(seconds) {
    if (this.thinking && this.thinking.open && this.content === "") {
      this.thinking.open = false;
      this.thinking.querySelector("summary").textContent = `thought for ${seconds.toFixed(1)} s`;
    }
  }

  addContent(text) {
    this.content += text;
    this.contentNode.textContent = this.content;
  }

  addToolCallDeltas(deltas) {
    for (const delta of deltas) {
      const index = delta.index ?? this.toolCalls.length;
      const call = this.toolCalls[index] ||= { id: delta.id, type: "function", function: { name: "", arguments: "" } };
      if (delta.id) call.id = delta.id;
      if (delta.function?.name) call.function.name += delta.function.name;
      if (delta.function?.arguments) call.function.arguments += delta.function.arguments;
    }
    if (!this.toolNode) this.toolNode = addText(this.bubble, "tool-calls", "");
    this.toolNode.textContent = this.toolCalls.map((c) => `${c.function.name}(${c.function.arguments})`).join("\n");
  }

  note(text) {
    addText(this.bubble, "note", text);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function showStats(stats) {
  $("stat-prompt").textContent = stats.promptTokens ?? "–";
  $("stat-completion").textContent = stats.completionTokens ?? "–";
  $("stat-ttft").textContent = stats.ttft === undefined ? "–" : `${Math.round(stats.ttft)} ms`;
  $("stat-tps").textContent = stats.tokensPerSecond === undefined ? "–" : stats.tokensPerSecond.toFixed(1);
  $("stat-finish").textContent = stats.finish ?? "–";
}

async function send(text) {
  if (state.controller) return;
  let body;
  state.messages.push({ role: "user", content: text });
  addText(addBubble("user"), "content", text);
  try {
    body = buildRequest();
  } catch (err) {
    state.messages.pop();
    showError(`invalid JSON in the output settings: ${err.message}`);
    return;
  }
  scrollDown();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  const stats = {};
  let firstAt, lastAt, deltaCount = 0;
  let view = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      state.messages.pop();
      showError(errorMessage(response.status, await response.text()));
      return;
    }
    view = new AnswerView();
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) {
        showError(errorMessage(response.status, data));
        continue;
      }
      if (event.usage) {
        stats.promptTokens = event.usage.prompt_tokens;
        stats.completionTokens = event.usage.completion_tokens;
      }
      for (const choice of event.choices || []) {
        const delta = choice.delta || {};
        const now = performance.now();
        if (delta.reasoning_content || delta.content || delta.tool_calls) {
          if (firstAt === undefined) firstAt = now;
          lastAt = now;
          deltaCount += 1;
        }
        if (delta.reasoning_content) view.addReasoning(delta.reasoning_content);
        if (delta.content) {
          view.closeThinking((now - started) / 1000);
          view.addContent(delta.content);
        }
        if (delta.tool_calls) view.addToolCallDeltas(delta.tool_calls);
        if (choice.finish_reason) stats.finish = choice.finish_reason;
      }
      scrollDown();
    }
  } catch (err) {
    if (err.name === "AbortError") {
      stats.finish = "stopped";
      if (view) view.note("stopped");
      else state.messages.pop();
    } else {
      showError(`request failed: ${err.message}`);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    if (view) {
      const message = { role: "assistant", content: view.content };
      if (view.toolCalls.length) message.tool_calls = view.toolCalls;
      state.messages.push(message);
    }
    if (firstAt !== undefined) {
      stats.ttft = firstAt - started;
      // Decode speed after the first token; a stopped answer has no usage, so its streamed pieces are counted.
      const tokens = stats.completionTokens ?? deltaCount;
      if (stats.completionTokens === undefined) stats.completionTokens = `~${deltaCount}`;
      if (tokens > 1 && lastAt > firstAt) stats.tokensPerSecond = (tokens - 1) / ((lastAt - firstAt) / 1000);
    }
    showStats(stats);
    scrollDown();
  }
}

// ---- wiring -----------------------------------------------------------------------------------------------------
function showModeBoxes() {
  const mode = $("mode").value;
  $("json-schema-box").hidden = mode !== "json";
  $("tools-box").hidden = mode !== "tools";
  // The server refuses thinking together with a JSON schema or a forced tool call (both are grammar-constrained).
  if (mode === "json" || (mode === "tools" && $("tool-choice").value === "required")) $("thinking").checked = false;
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    refreshStatus();
  });
  $("json-schema").value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  $("tools").value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
  $("mode").addEventListener("change", showModeBoxes);
  $("tool-choice").addEventListener("change", showModeBoxes);
  $("example-json").addEventListener("click", () => {
    $("mode").value = "json";
    showModeBoxes();
    $("prompt").value = "Describe the capital of France as JSON.";
    $("prompt").focus();
  });
  $("example-tool").addEventListener("click", () => {
    $("mode").value = "tools";
    showModeBoxes();
    $("prompt").value = "What is the weather in Paris right now?";
    $("prompt").focus();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.messages = [];
    $("conversation").replaceChildren();
    showStats({});
  });
  showModeBoxes();
  refreshStatus();
}

init();
