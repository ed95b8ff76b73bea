"""A custom node that reads an image from a file path, as nodes fed by comfy-pack's CPackInputFile do."""

import numpy as np
import torch
from PIL import Image


class LoadImageFromPath:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "comfybento/tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}

    def load(self, path):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
        return (torch.from_numpy(pixels)[None],)


NODE_CLASS_MAPPINGS = {"LoadImageFromPath": LoadImageFromPath}
