"""A procedural, captioned toy image world and an analytic evaluator for it.

A tiny Stable-Diffusion-architecture model pretrained on `world` can be personalised with
DreamBooth in minutes on a CPU, and `evaluator` then measures the result directly (subject
fidelity, prompt fidelity, prior preservation, diversity), because we know how every scene
is drawn. Import the submodules explicitly; this package imports nothing heavy.
"""
