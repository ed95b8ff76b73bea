// The official openai npm package against a running comfybento's OpenAI Images API, unchanged but for baseURL.
// Run by tests/e2e/test_openai_images.py; prints one JSON line of what it saw (the test checks it).
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.COMFYBENTO_URL}/v1`, apiKey: process.env.OPENAI_API_KEY || "unused" });

const models = [];
for await (const model of client.models.list()) models.push(model.id);

const generated = await client.images.generate({ model: "txt2img", prompt: "a lighthouse at dusk", n: 2, size: "64x64", quality: "fast" });
const pngs = generated.data.map((d) => Buffer.from(d.b64_json, "base64"));

let refused = null;
try {
  await client.images.generate({ model: "txt2img", prompt: "x", size: "huge" });
} catch (err) {
  refused = { status: err.status, param: err.param ?? err.error?.param ?? null, type: err.type ?? err.error?.type ?? null };
}

console.log(JSON.stringify({
  models,
  count: generated.data.length,
  png: pngs.map((b) => b.subarray(1, 4).toString("ascii")),
  size: generated.size,
  output_format: generated.output_format,
  refused,
}));
