// What both pages share: the API key (kept in localStorage), authenticated fetch, and errors in words.

const KEY_STORE = "tide.apiKey";

export function getKey() {
  try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

export function setKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORE, value); else localStorage.removeItem(KEY_STORE);
  } catch { /* storage disabled: the key lives for this page only */ }
}

/** Request headers with the key, when one is set: every API call goes through here. */
export function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: "Bearer " + key } : { ...extra };
}

export function apiFetch(path, options = {}) {
  return fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
}

/** A failed call, as the page shows it: `text` for people, `detail` from the server, `status` for code. */
export class ApiError extends Error {
  constructor(text, { status = 0, detail = "", code = null, retryAfter = null } = {}) {
    super(text);
    this.status = status; this.detail = detail; this.code = code; this.retryAfter = retryAfter;
  }
}

function seconds(n) { return n === 1 ? "1 second" : `${n} seconds`; }

/** Turn a status and an OpenAI-style error object into a sentence a user can act on. */
export function describeError(status, error = {}, retryAfter = null, model = "") {
  const code = error.code ?? null;
  const detail = typeof error.message === "string" ? error.message : "";
  const which = model ? `Model “${model}”` : "The model";
  const retry = retryAfter != null && Number.isFinite(+retryAfter) ? ` Try again in ${seconds(+retryAfter)}.` : "";
  let text;
  if (status === 401) text = "The server needs a valid API key. Enter your key in the key field at the top and send again.";
  else if (status === 403) text = "This API key is not allowed to do that.";
  else if (status === 404 && code === "model_not_found") text = `${which} is not served here. Pick another model.`;
  else if (status === 429 && code === "too_many_held_requests") text = `${which} is starting and already has too many requests waiting.${retry}`;
  else if (status === 429) text = `Too many requests right now.${retry || " Wait a moment and try again."}`;
  else if (status === 503 && code === "cold_start_timeout") text = `${which} is still starting (it was scaled to zero).${retry}`;
  else if (status === 503) text = `The service is unavailable right now.${retry}`;
  else if (status === 413) text = "The conversation is too large to send. Start a new chat.";
  else if (status >= 400 && status < 500) text = `The request was rejected: ${detail || "bad request"}.`;
  else if (status >= 500) text = `The server failed to answer: ${detail || "HTTP " + status}.`;
  else text = detail || "Something went wrong.";
  return new ApiError(text, { status, detail, code, retryAfter });
}

/** An error that arrives inside a stream has no HTTP status: recover it from the OpenAI error type. */
export function statusOfType(type) {
  return { invalid_request_error: 400, authentication_error: 401, permission_error: 403, not_found_error: 404,
    rate_limit_error: 429, service_unavailable_error: 503 }[type] ?? 500;
}

/** Read a non-2xx response into an ApiError (works for JSON bodies and for anything else). */
export async function errorFromResponse(response, model = "") {
  let error = {};
  try { error = (await response.json()).error || {}; } catch { /* not JSON */ }
  return describeError(response.status, error, response.headers.get("Retry-After"), model);
}

/** The key field in each page's header: shows whether a key is set, saves it on change. */
export function mountKeyField(input, onChange = () => {}) {
  input.value = getKey();
  input.addEventListener("change", () => { setKey(input.value.trim()); onChange(); });
}
