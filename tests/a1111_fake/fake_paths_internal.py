"""modules.paths_internal: where the WebUI lives and keeps its data. Until `fake_webui.setup`
points them at a test's folder, everything is the folder of the fakes."""
import os

script_path = data_path = os.path.dirname(os.path.abspath(__file__))
models_path = os.path.join(data_path, "models")
default_output_dir = os.path.join(data_path, "outputs")
