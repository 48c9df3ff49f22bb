// Small live line charts on <canvas>: a time window on x, zero-based y, gaps where values are unknown.
import { niceMax } from "/static/series.js";

/** Draw `lines` ([{points: [{t, v}], color, dash}]) over [now - windowS, now]; returns the points drawn. */
export function drawChart(canvas, lines, { now, windowS, format = String }) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 90;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(canvas);
  const ink = style.getPropertyValue("--chart-ink").trim() || "#888";
  const grid = style.getPropertyValue("--chart-grid").trim() || "#ddd";

  const pad = { l: 4, r: 4, t: 14, b: 14 };
  const values = lines.flatMap((l) => l.points.map((p) => p.v)).filter((v) => v !== null);
  const top = niceMax(Math.max(0, ...values) * 1.15);  // headroom, so a flat line does not sit on the frame
  const x = (t) => pad.l + ((t - (now - windowS)) / windowS) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / top) * (h - pad.t - pad.b);

  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.setLineDash([]);
  for (const v of [0, top / 2, top]) {
    ctx.beginPath(); ctx.moveTo(pad.l, Math.round(y(v)) + 0.5); ctx.lineTo(w - pad.r, Math.round(y(v)) + 0.5); ctx.stroke();
  }
  ctx.fillStyle = ink;
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.fillText(format(top), pad.l, 1);
  ctx.textBaseline = "bottom";
  ctx.fillText(windowS >= 120 ? `−${Math.round(windowS / 60)} min` : `−${Math.round(windowS)} s`, pad.l, h);
  ctx.textAlign = "right";
  ctx.fillText("now", w - pad.r, h);
  ctx.textAlign = "left";

  let drawn = 0;
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(line.dash ? [5, 4] : []);
    ctx.beginPath();
    let open = false;
    for (const p of line.points) {
      if (p.v === null) { open = false; continue; }
      if (open) ctx.lineTo(x(p.t), y(p.v)); else ctx.moveTo(x(p.t), y(p.v));
      open = true;
      drawn++;
    }
    ctx.stroke();
    const last = line.points.filter((p) => p.v !== null).at(-1);
    if (last) {  // the newest value as a dot, so a single sample is visible too
      ctx.fillStyle = line.color;
      ctx.beginPath(); ctx.arc(x(last.t), y(last.v), 2.5, 0, 2 * Math.PI); ctx.fill();
    }
  }
  return drawn;
}
