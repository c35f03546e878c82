"""dreambooth_core: Stable Diffusion personalization (DreamBooth, LoRA, Textual Inversion,
Hypernetworks) and format conversion, shared by the A1111 and ComfyUI adapters.

Importing the package is deliberately light (no torch, diffusers or peft): host adapters
import the config and jobs client inside hosts whose own packages may be old.
"""
__version__ = "0.1.0"
