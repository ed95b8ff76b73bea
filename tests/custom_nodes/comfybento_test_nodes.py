"""A project-level custom node used by the tests: passes images through, or fails on demand."""


class RaiseOnText:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "comfybento/tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "text": ("STRING", {"default": ""})}}

    def run(self, images, text):
        if "boom" in text:
            raise RuntimeError(f"asked to fail by text {text!r}")
        return (images,)


NODE_CLASS_MAPPINGS = {"RaiseOnText": RaiseOnText}
