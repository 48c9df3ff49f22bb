// The status page's memory: a rolling window of samples per model, and how values read on screen.

/** The fields charted and shown per model, with how each one prints. */
export const FIELDS = {
  desired: { label: "Desired replicas", format: (v) => String(v) },
  running: { label: "Running replicas", format: (v) => String(v) },
  replicas: { label: "All replicas", format: (v) => String(v) },
  waiting: { label: "Queue (waiting)", format: (v) => String(v) },
  engine_running: { label: "In the engine", format: (v) => String(v) },
  held: { label: "Held (cold start)", format: (v) => String(v) },
  tokens_per_s: { label: "Tokens/s", format: (v) => v >= 100 ? v.toFixed(0) : v.toFixed(1) },
  ttft_p50_ms: { label: "TTFT p50", format: (v) => v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(0) + " ms" },
  kv_cache_usage: { label: "KV cache", format: (v) => (v * 100).toFixed(0) + " %" },
  expected_start_s: { label: "Expected start", format: (v) => v.toFixed(0) + " s" },
};

/** A value for people: "–" when the server does not know it (null, missing, not a number). */
export function formatValue(field, value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return (FIELDS[field]?.format ?? String)(value);
}

/** Samples of one model over the last `windowS` seconds; `t` is the page's clock (seconds). */
export class History {
  constructor(windowS = 600) { this.windowS = windowS; this.samples = []; }

  add(t, status) {
    const sample = { t };
    for (const f of Object.keys(FIELDS)) {
      const v = status?.[f];
      sample[f] = typeof v === "number" && Number.isFinite(v) ? v : null;
    }
    this.samples.push(sample);
    this.trim(t);
    return sample;
  }

  trim(now) {
    const from = now - this.windowS;
    let k = 0;
    while (k < this.samples.length && this.samples[k].t < from) k++;
    if (k) this.samples.splice(0, k);
  }

  /** [{t, v}] for one field; null values stay, so charts show the gap. */
  series(field) { return this.samples.map((s) => ({ t: s.t, v: s[field] })); }

  latest() { return this.samples.at(-1) ?? null; }
}

/** A round axis maximum at or above `max` (1, 2, 5 x 10^n), so the scale does not jitter. */
export function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (max <= m * p) return m * p;
  return 10 * p;
}
