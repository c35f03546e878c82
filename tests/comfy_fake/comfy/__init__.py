"""Fake of the parts of ComfyUI's `comfy` package that the DreamBooth nodes use."""
