"""ComfyScript's remote mode against the service (argv[1]), as its README shows it: load() reads /object_info into
node classes, the graph names its nodes by class ("SaveImage.0"), and SaveImage(...).wait() reads the images back
under that id. Run by tests/e2e/test_comfyui_api.py in a child process (ComfyScript reads this file's source)."""

import sys

from comfy_script.runtime import Workflow, load

load(sys.argv[1])
from comfy_script.runtime.nodes import (  # noqa: E402  (the node classes exist once load() has read /object_info)
    CheckpointLoaderSimple,
    CLIPTextEncode,
    EmptyLatentImage,
    KSampler,
    SaveImage,
    VAEDecode,
)

with Workflow(wait=True):
    model, clip, vae = CheckpointLoaderSimple("tiny-sd.safetensors")
    positive = CLIPTextEncode("a lighthouse at dusk", clip)
    negative = CLIPTextEncode("text, watermark", clip)
    latent = KSampler(model, 5, 2, 8, "euler", "normal", positive, negative, EmptyLatentImage(128, 128, 1), 1)
    saved = SaveImage(VAEDecode(latent, vae), "ComfyUI")
images = saved.wait()
image = images[0]  # a PIL image, read back from the output SaveImage.0 names in the history
print("IMAGE", image.size, image.mode)
