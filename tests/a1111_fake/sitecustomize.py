"""Run at the start of a subprocess with PYTHONPATH=<this folder>, as a WebUI's Python would
have its modules: serve the fake WebUI modules under their host names."""
import fake_webui

fake_webui.FAKES.install()
