"""The AUTOMATIC1111 / Forge adapter of dreambooth_core, loaded by scripts/dreambooth_tab.py.

- host: the WebUI's folders, lists, settings and model (the only module using `modules.*`)
- form: the tab's fields and the TrainConfig they make
- session: the one training queue, unloading the model, publishing and refreshing results
- render: a run's state as HTML, an SVG loss curve and log text
- ui: the tab (gradio) and its handlers; settings: Settings → DreamBooth; api: HTTP routes
"""
from . import api, settings, ui

__all__ = ["api", "settings", "ui"]
