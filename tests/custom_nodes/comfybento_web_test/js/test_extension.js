// Imported by ComfyUI's editor from /extensions (tests/e2e/test_editor.py): it registers a frontend extension whose
// setup() marks the page, through the frontend's own module that custom nodes' scripts import.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "comfybento.test.webExtension",
  async setup() {
    window.comfybentoTestExtension = `loaded from ${import.meta.url.split("/").slice(-3).join("/")}`;
  },
});
