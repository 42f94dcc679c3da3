// Line-delimited JSON over stdin/stdout, shared by the interop peers.
//
// Each request is one line: {"id": N, "op": "name", ...arguments}.  Each reply is one line:
// {"id": N, "ok": true, ...results} or {"id": N, "ok": false, "error": "..."}.  Byte strings
// travel as lowercase hex.  Requests are handled one at a time, in order, so the Python side
// can treat the peer as a plain synchronous object.
import { createInterface } from "node:readline";

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));

// An error's text, with the structured detail that uniffi errors (core-crypto) carry inside.
function describe(err) {
  let text = String(err?.stack ?? err);
  for (const detail of [err?.inner, err?.cause]) {
    if (detail !== undefined) {
      text += `\ndetail: ${JSON.stringify(detail, (_, v) => (typeof v === "bigint" ? String(v) : v))}`;
    }
  }
  return text;
}

export function serve(handlers) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  let queue = Promise.resolve();
  lines.on("line", (line) => {
    queue = queue.then(async () => {
      let request;
      try {
        request = JSON.parse(line);
      } catch (err) {
        process.stdout.write(JSON.stringify({ id: null, ok: false, error: `bad JSON: ${err}` }) + "\n");
        return;
      }
      const handler = handlers[request.op];
      let reply;
      try {
        if (handler === undefined) throw new Error(`unknown op ${request.op}`);
        reply = { id: request.id, ok: true, ...(await handler(request)) };
      } catch (err) {
        reply = { id: request.id, ok: false, error: describe(err) };
      }
      process.stdout.write(JSON.stringify(reply) + "\n");
    });
  });
  lines.on("close", () => {
    queue.then(() => process.exit(0));
  });
}
