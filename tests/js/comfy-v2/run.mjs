// The official @comfyorg/sdk against a running comfybento, unchanged: COMFY_BASE_URL names the service.
// Run by tests/e2e/test_comfy_v2.py; prints one JSON line of what it saw (the test checks it).
import { readFileSync } from "node:fs";
import { deflateSync, inflateSync } from "node:zlib";

import { Comfy, ComfyError } from "@comfyorg/sdk";

const client = new Comfy();
const served = () => JSON.parse(readFileSync(process.env.IMG2IMG_GRAPH, "utf8"));
const graph = served();

// A size x size RGB PNG (8-bit, no filter) made here, so the upload is real bytes.
function makePng(size) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows = Buffer.alloc(size * (1 + size * 3));
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) rows.set([x * 8, y * 8, (x + y) * 4], y * (1 + size * 3) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// Decode a PNG's header and inflate its pixel data: [width, height] when the rows are all there.
function decodePng(bytes) {
  const buf = Buffer.from(bytes);
  if (buf.subarray(1, 4).toString("ascii") !== "PNG") throw new Error("not a PNG");
  const width = buf.readUInt32BE(16);
  const height = buf.readUInt32BE(20);
  const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[buf[25]];
  const idat = [];
  for (let at = 8; at < buf.length; ) {
    const length = buf.readUInt32BE(at);
    if (buf.subarray(at + 4, at + 8).toString("ascii") === "IDAT") idat.push(buf.subarray(at + 8, at + 8 + length));
    at += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  if (raw.length !== height * (1 + width * channels * (buf[24] / 8))) throw new Error("truncated PNG pixel data");
  return [width, height];
}

const codeOf = async (promise) => {
  try {
    await promise;
    return "no error";
  } catch (err) {
    if (!(err instanceof ComfyError)) throw err;
    return err.code;
  }
};

const asset = client.assets.fromBytes(makePng(64), { filename: "photo.png", contentType: "image/png" });
graph["6"].inputs.text = "a comfy v2 harbour, from node";
graph["3"].inputs.seed = 777;
const wf = client.workflows.fromJson(graph);
wf.setInput("10", "image", asset);
const key = crypto.randomUUID();
const job = await client.submit(wf, { idempotencyKey: key });
const reusedKey = await codeOf(client.submit(wf, { idempotencyKey: key }));

const events = [];
for await (const event of job.events()) events.push(event.kind === "statusChange" ? `status:${event.status}` : event.kind);
await job.refresh();
const [output] = job.getOutputs("9");
const [pngWidth, pngHeight] = decodePng(await output.toBytes());

const slow = served();
slow["10"].inputs.image = await asset.asReference();
slow["3"].inputs.steps = 40;
const toCancel = await client.submit(client.workflows.fromJson(slow));
await toCancel.cancel();

const bad = structuredClone(slow);
bad["8"].class_type = "VAEDecodeTiled";
const mismatch = await codeOf(client.submit(client.workflows.fromJson(bad)));

console.log(JSON.stringify({
  status: job.status,
  events: [...new Set(events.map((e) => e.split(":")[0] === "status" ? "status" : e === "outputReady" ? "output" : e))],
  last_event: events.at(-1),
  png_width: pngWidth,
  png_height: pngHeight,
  reused_key: reusedKey,
  canceled: toCancel.status,
  mismatch,
}));
