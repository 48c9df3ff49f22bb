// Safe Markdown for model output: builds DOM nodes with textContent only, never parses HTML.
// Covers what chat answers use: code fences, inline code, bold, italic, links (http/https only),
// headings, lists, block quotes, rules and paragraphs. Anything else stays literal text.

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]{0,30})\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const ORDERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;

// One alternation per inline form; the earliest match wins, its inner text is parsed again (except code).
const INLINE = new RegExp([
  "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)",            // 1,2: `code`
  "\\*\\*(?!\\s)([\\s\\S]+?)\\*\\*",                     // 3: **bold**
  "__(?!\\s)([\\s\\S]+?)__(?!\\w)",                     // 4: __bold__
  "\\[([^\\]\\n]+)\\]\\(([^()\\s]+)\\)",                // 5,6: [text](url)
  "(https?:\\/\\/[^\\s<>()\"']*[^\\s<>()\"'.,;:!?])",    // 7: bare URL
  "(?<![\\w*])\\*(?![\\s*])([^*\\n]+?)(?<!\\s)\\*(?![\\w*])", // 8: *italic*
  "(?<!\\w)_(?![\\s_])([^_\\n]+?)(?<!\\s)_(?!\\w)",    // 9: _italic_
].join("|"));

/** A link target the page may use: absolute http(s) only (no javascript:, data:, relative paths). */
export function safeUrl(text) {
  let url;
  try { url = new URL(text); } catch { return null; }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

function link(label, href) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.textContent = label;
  return a;
}

/** Append the inline content of `text` to `parent`. */
export function renderInline(text, parent) {
  let rest = text;
  while (rest.length) {
    const m = INLINE.exec(rest);
    if (!m) { parent.append(document.createTextNode(rest)); break; }
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    if (m[2] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(code);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const b = document.createElement("strong");
      renderInline(m[3] ?? m[4], b);
      parent.append(b);
    } else if (m[5] !== undefined) {
      const href = safeUrl(m[6]);
      if (href) parent.append(link(m[5], href));
      else parent.append(document.createTextNode(m[5]));  // unsafe target: keep the words, drop the link
    } else if (m[7] !== undefined) {
      const href = safeUrl(m[7]);
      parent.append(href ? link(m[7], href) : document.createTextNode(m[7]));
    } else {
      const i = document.createElement("em");
      renderInline(m[8] ?? m[9], i);
      parent.append(i);
    }
    rest = rest.slice(m.index + m[0].length);
  }
  return parent;
}

function paragraph(lines) {
  const p = document.createElement("p");
  lines.forEach((line, k) => {
    if (k) p.append(document.createElement("br"));
    renderInline(line, p);
  });
  return p;
}

function codeBlock(lang, lines) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (lang) { code.className = "language-" + lang; pre.dataset.lang = lang; }
  code.textContent = lines.join("\n");
  pre.append(code);
  return pre;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) ||
    ORDERED.test(line) || QUOTE.test(line);
}

/** Render Markdown `text` into a DocumentFragment. An unclosed fence (mid-stream) still renders as code. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = FENCE.exec(line))) {
      const body = [];
      const close = new RegExp("^\\s*" + m[1][0] + "{" + m[1].length + ",}\\s*$");
      for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
      i++;
      out.append(codeBlock(m[2], body));
    } else if ((m = HEADING.exec(line))) {
      const h = document.createElement("h" + Math.min(6, m[1].length + 2));  // answers never need a page title
      renderInline(m[2], h);
      out.append(h);
      i++;
    } else if (RULE.test(line)) {
      out.append(document.createElement("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) inner.push(m[1]);
      const q = document.createElement("blockquote");
      q.append(renderMarkdown(inner.join("\n")));
      out.append(q);
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? ORDERED : BULLET;
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered) {
        const start = parseInt(ORDERED.exec(line)[1], 10);
        if (start !== 1) list.start = start;
      }
      let item = null;
      for (; i < lines.length; i++) {
        const l = lines[i];
        if ((m = pattern.exec(l))) {
          item = document.createElement("li");
          renderInline(ordered ? m[2] : m[1], item);
          list.append(item);
        } else if (l.trim() && /^\s+/.test(l) && !isBlockStart(l)) {  // an indented continuation line
          item.append(document.createElement("br"));
          renderInline(l.trim(), item);
        } else break;
      }
      out.append(list);
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !isBlockStart(lines[i]); i++) para.push(lines[i]);
      out.append(paragraph(para));
    }
  }
  return out;
}
