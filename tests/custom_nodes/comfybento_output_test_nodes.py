"""Project-level test nodes for the output tests: a text and an AUDIO value made from images (no torchaudio needed)."""

import math

import torch


class ImagesToText:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "comfybento/tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def run(self, images):
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        return (f"{count} images of {width}x{height}, mean {float(images.mean()):.4f}",)


class ImagesToAudio:
    """A mono AUDIO value: one tone per image, its pitch from the image's mean brightness."""

    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "run"
    CATEGORY = "comfybento/tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "seconds": ("FLOAT", {"default": 0.25, "min": 0.05, "max": 2.0})}}

    def run(self, images, seconds):
        rate = 16000
        t = torch.arange(int(rate * seconds)) / rate
        tones = [0.5 * torch.sin(2 * math.pi * (220 + 440 * float(image.mean())) * t) for image in images]
        return ({"waveform": torch.stack(tones).unsqueeze(1), "sample_rate": rate},)


NODE_CLASS_MAPPINGS = {"ImagesToText": ImagesToText, "ImagesToAudio": ImagesToAudio}
