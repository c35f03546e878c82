"""Fake of modules/shared.py: cmd_opts, opts, the list refreshers, and the lazy `sd_model`."""
import sys

from modules import options
from modules.paths_internal import data_path, models_path, script_path, sd_model_file  # noqa: F401

cmd_opts = None            # an argparse.Namespace, set by fake_webui.setup
opts = options.Options({}, set())
OptionInfo = options.OptionInfo
hypernetworks = {}
state = None
demo = None


def refresh_checkpoints():
    import modules.sd_models
    return modules.sd_models.list_models()


def list_checkpoint_tiles(use_short=False):
    import modules.sd_models
    return modules.sd_models.checkpoint_tiles(use_short)


def reload_hypernetworks():
    from modules.hypernetworks import hypernetwork
    from modules import shared

    shared.hypernetworks = hypernetwork.list_hypernetworks(cmd_opts.hypernetwork_dir)


class Shared(sys.modules[__name__].__class__):
    """As in the WebUI: reading sd_model loads the model when none is loaded yet."""

    @property
    def sd_model(self):
        import modules.sd_models
        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models
        modules.sd_models.model_data.set_sd_model(value)


sys.modules["modules.shared"].__class__ = Shared
