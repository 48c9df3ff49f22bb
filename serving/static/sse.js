// Incremental Server-Sent Events parsing for fetch() bodies (EventSource cannot POST or send headers).

/** Feed decoded text as it arrives; get back complete events: {type: "data", data} or {type: "comment", text}. */
export class SSEParser {
  constructor() { this.buffer = ""; this.data = []; }

  feed(text) {
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();  // a partial line waits for the next chunk
    const events = [];
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) events.push({ type: "data", data: this.data.join("\n") });
        this.data = [];
      } else if (line.startsWith(":")) {
        events.push({ type: "comment", text: line.slice(1).trim() });
      } else if (line.startsWith("data:")) {
        this.data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }  // other fields (event:, id:, retry:) are not used by the API
    }
    return events;
  }

  /** The stream ended: a last event without its blank line still counts. */
  end() {
    const events = this.feed("\n\n");
    this.buffer = "";
    return events;
  }
}
