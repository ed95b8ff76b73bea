// @saintno/comfyui-sdk, unchanged, against a running comfybento: upload an image, run a graph, follow its
// websocket events, fetch the output. Usage: node run.mjs <base url> <API-format graph.json> <image.png>
// Prints one JSON line: {uploaded, promptId, events, progress, outputs, image_bytes, image_type}.
import { readFileSync } from "node:fs";
import { CallWrapper, ComfyApi, PromptBuilder } from "@saintno/comfyui-sdk";

const [base, graphPath, imagePath] = process.argv.slice(2);
const graph = JSON.parse(readFileSync(graphPath, "utf8"));
const api = new ComfyApi(base);
const events = [];
for (const name of ["status", "execution_start", "executing", "progress", "executed", "execution_success", "execution_error"]) {
  api.on(name, () => events.push(name));
}
await api.init(5, 500).waitForReady();

const upload = await api.uploadImage(new Uint8Array(readFileSync(imagePath)), "comfyui-sdk-input.png");
if (!upload) throw new Error("upload failed");

const workflow = new PromptBuilder(graph, ["image", "positive", "seed"], ["images"])
  .setInputNode("image", "10.inputs.image")
  .setInputNode("positive", "6.inputs.text")
  .setInputNode("seed", "3.inputs.seed")
  .setOutputNode("images", "9")
  .input("image", upload.info.filename)
  .input("positive", "a comfyui-sdk painting")
  .input("seed", 1234);

const progress = [];
let promptId = null;
const timer = setTimeout(() => { console.error("timed out; events:", events.join(",")); process.exit(2); }, 240000);
const result = await new Promise((resolve, reject) => {
  new CallWrapper(api, workflow)
    .onPending((id) => { promptId = id; })
    .onProgress((p) => progress.push([p.value, p.max]))
    .onFinished((data) => resolve(data))
    .onFailed((err) => reject(err))
    .run();
});
clearTimeout(timer);
const image = result.images.images[0];
const blob = await api.getImage(image);
const bytes = new Uint8Array(await blob.arrayBuffer());
console.log(JSON.stringify({ uploaded: upload.info, promptId, events, progress, outputs: result.images,
  image_bytes: bytes.length, image_type: blob.type, png: bytes[1] === 0x50 && bytes[2] === 0x4e }));
api.destroy();
process.exit(0);
