"""How well a run learned: the DreamBooth paper's measures (subject fidelity, prompt fidelity,
prior drift, diversity) over a fixed set of generations, scored by an encoder file (CLIP,
DINOv2) or the toy world's exact evaluator. Heavy imports stay inside the modules."""
