// The README's example, type-checked by `npm test` (tsc --noEmit) so that it stays right; not run.
import { connect, getJob, submitJob, txt2img, txt2imgPng, txt2imgStream } from "../src/index.ts";

const client = connect({ baseUrl: "http://localhost:3000", apiKey: process.env.COMFYBENTO_API_KEY });

// POST /txt2img: the body is typed from the workflow (bounds and enums in the doc comments)
const { data, error } = await txt2img({ client, body: { prompt: "a lighthouse at dusk", steps: 20, seed: 42 } });
if (error) throw new Error(error.error); // ErrorResponse: error, error_kind, detail (one entry per bad field)
console.log(data.seed, data.outputs[0].media_type); // 42 "image/png"; outputs[0].data is the image, base64

// POST /txt2img/png: the image's bytes, as a Blob
const png = await txt2imgPng({ client, body: { prompt: "a lighthouse at dusk", output_format: "webp" } });
console.log(png.response.headers.get("content-type"), png.data?.size);

// Batch jobs: submit, then poll (state: "queued" | "running" | "succeeded" | "failed" | "cancelled")
const job = await submitJob({ client, body: { workflow: "txt2img", items: [{ prompt: "a red cube" }, { prompt: "a blue sphere" }] } });
if (job.error) throw new Error(JSON.stringify(job.error));
const status = await getJob({ client, path: { job_id: job.data.id } });
console.log(status.data?.state, status.data?.counts);

// Live progress (docs/endpoints.md, "Live progress"): POST /txt2img/stream as typed events; no retry (it would run the workflow again)
const { stream } = await txt2imgStream({ client, body: { prompt: "a lighthouse", steps: 4 }, sseMaxRetryAttempts: 1 });
for await (const event of stream) if (event.event === "progress") console.log(`${event.value}/${event.max}`);
