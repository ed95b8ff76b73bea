import { defineConfig } from "@hey-api/openapi-ts";

// Generated from openapi.json, which ../../scripts/gen-client writes from the project (python -m comfybento openapi).
// Regenerate both with ./scripts/gen-client; CI fails when they are out of date.
export default defineConfig({
  input: "openapi.json",
  output: "src/generated",
  plugins: [
    "@hey-api/client-fetch",
    "@hey-api/typescript",
    // Function names are the schema's operation ids as they are (txt2img, txt2imgPng, submitJob, getJob ...).
    { name: "@hey-api/sdk", operations: { methodName: { casing: "preserve" } } },
  ],
});
