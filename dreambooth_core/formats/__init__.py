"""File formats: single-file LDM checkpoints ⇄ diffusers, and the key maps between them.

Hosts (A1111, ComfyUI) and kohya-style LoRA files name weights by the original LDM/SGM
module tree; training happens on diffusers modules. These modules hold the exact,
config-driven correspondence so every writer and reader agrees on it.
"""
