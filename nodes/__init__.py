"""The DreamBooth node pack for ComfyUI (V3 node API); imported only inside ComfyUI.

Nodes: Load Training Images → Concept → Train LoRA | DreamBooth | Textual Inversion |
Hypernetwork, plus utilities to convert models and convert, merge and extract LoRAs, and
Evaluate (how well any artifact learned its subject).
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .concept import ConceptNode
from .dataset import LoadTrainingImages
from .evaluate import Evaluate
from .train import TRAIN_NODES
from .utility import UTILITY_NODES

NODES: list[type[io.ComfyNode]] = [LoadTrainingImages, ConceptNode, *TRAIN_NODES, *UTILITY_NODES, Evaluate]


class DreamBoothExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
