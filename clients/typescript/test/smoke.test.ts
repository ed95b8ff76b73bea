/**
 * The generated client against a real running service (tests/e2e/test_ts_client.py starts one and sets COMFYBENTO_URL):
 * the txt2img workflow as JSON and as raw bytes, a refused request, and a batch job followed to the end.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { connect, getJob, getJobFile, getJobResults, type JobStatus, submitJob, txt2img, txt2imgPng } from "../src/index.ts";
import { decodePng } from "./png.ts";

const baseUrl = process.env.COMFYBENTO_URL;
if (!baseUrl) throw new Error("set COMFYBENTO_URL to a running comfybento service (tests/e2e/test_ts_client.py does)");
const client = connect({ baseUrl, apiKey: process.env.COMFYBENTO_API_KEY });
const SMALL = { prompt: "a lighthouse at dusk", steps: 2, width: 96, height: 64 } as const;

async function bytesOf(blob: Blob): Promise<Uint8Array> {
  return new Uint8Array(await blob.arrayBuffer());
}

test("txt2img answers JSON with a PNG output", async () => {
  const { data, error, response } = await txt2img({ client, body: { ...SMALL, seed: 7 } });
  assert.equal(error, undefined, JSON.stringify(error));
  assert.equal(response.status, 200);
  assert.ok(data);
  assert.equal(data.workflow, "txt2img");
  assert.equal(data.seed, 7);
  assert.equal(data.outputs.length, 1);
  const [first] = data.outputs;
  assert.equal(first.name, "save_image");
  assert.equal(first.kind, "image");
  assert.equal(first.media_type, "image/png");
  assert.ok(first.data, "output_delivery base64 puts the bytes in `data`");
  assert.deepEqual(decodePng(Buffer.from(first.data, "base64")), { width: 96, height: 64 });
  assert.ok(data.timings.execution_ms > 0);
});

test("txt2imgPng answers the image's bytes", async () => {
  const { data, error, response } = await txt2imgPng({ client, body: { ...SMALL, seed: 8, output_format: "png" } });
  assert.equal(error, undefined, JSON.stringify(error));
  assert.equal(response.headers.get("content-type"), "image/png");
  assert.equal(response.headers.get("x-seed"), "8");
  assert.ok(data instanceof Blob);
  assert.deepEqual(decodePng(await bytesOf(data)), { width: 96, height: 64 });
});

test("a bad field is a 400 that names it", async () => {
  const { data, error, response } = await txt2img({ client, body: { ...SMALL, steps: 0 } });
  assert.equal(data, undefined);
  assert.equal(response.status, 400);
  assert.ok(error && "detail" in error && error.detail, JSON.stringify(error));
  assert.deepEqual(error.detail[0].loc, ["steps"]);
  assert.match(error.error, /steps|validation/);
  assert.ok(response.headers.get("x-request-id"));
});

test("a job runs to the end and its file downloads", async () => {
  const submitted = await submitJob({
    client,
    body: { workflow: "txt2img", items: [{ ...SMALL, seed: 11 }, { ...SMALL, seed: 12 }] },
  });
  assert.equal(submitted.response.status, 202, JSON.stringify(submitted.error));
  assert.ok(submitted.data);
  const jobId = submitted.data.id;
  let status: JobStatus | undefined;
  const deadline = Date.now() + 240_000;
  while (Date.now() < deadline) {
    const polled = await getJob({ client, path: { job_id: jobId } });
    assert.ok(polled.data, JSON.stringify(polled.error));
    status = polled.data;
    if (status.state === "succeeded" || status.state === "failed" || status.state === "cancelled") break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.ok(status);
  assert.equal(status.state, "succeeded", JSON.stringify(status));
  assert.equal(status.counts.succeeded, 2);

  const results = await getJobResults({ client, path: { job_id: jobId }, query: { limit: 10 } });
  assert.ok(results.data, JSON.stringify(results.error));
  assert.deepEqual(results.data.items.map((item) => item.seed), [11, 12]);
  const ref = results.data.items[0].outputs[0];
  assert.equal(ref.media_type, "image/png");
  const name = decodeURIComponent(new URL(ref.url).pathname.split("/").pop() ?? "");
  const file = await getJobFile({ client, path: { job_id: jobId, name } });
  assert.ok(file.data instanceof Blob, JSON.stringify(file.error));
  assert.deepEqual(decodePng(await bytesOf(file.data)), { width: 96, height: 64 });

  const missing = await getJob({ client, path: { job_id: "no-such-job" } });
  assert.equal(missing.response.status, 404);
  assert.equal(missing.error && "error_kind" in missing.error ? missing.error.error_kind : undefined, "not_found");
});

/** Never called: `tsc --noEmit` (npm test runs it first) fails if the generated types stop catching these. */
export function typesCatchMistakes(): void {
  // @ts-expect-error steps is an integer
  void txt2img({ client, body: { steps: "many" } });
  // @ts-expect-error no such field
  void txt2img({ client, body: { stepz: 3 } });
  // @ts-expect-error output_format is png | webp | jpeg
  void txt2img({ client, body: { output_format: "gif" } });
  // @ts-expect-error a job names a served workflow
  void submitJob({ client, body: { workflow: "nope", items: [] } });
  // @ts-expect-error a job's items are the workflow's fields
  void submitJob({ client, body: { workflow: "txt2img", items: [{ steps: "many" }] } });
  // @ts-expect-error getJob needs its job id
  void getJob({ client });
}
