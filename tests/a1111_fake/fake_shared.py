"""modules.shared: `cmd_opts` and `opts` (given values by fake_webui.setup), the
hypernetwork list, the list refreshers, and `sd_model`. Reading `sd_model` loads a model
when none is loaded yet — the WebUI's own property does — so code that must not load one
has to look at `sd_models.model_data.sd_model` instead."""
from modules import options

OptionInfo = options.OptionInfo
cmd_opts = None                    # an argparse.Namespace
opts = options.Options({}, set())
hypernetworks = {}                 # name -> file, as reload_hypernetworks finds them


def refresh_checkpoints():
    from modules import sd_models

    sd_models.list_models()


def reload_hypernetworks():
    global hypernetworks
    from modules.hypernetworks import hypernetwork

    hypernetworks = hypernetwork.list_hypernetworks(cmd_opts.hypernetwork_dir)


def __getattr__(name):
    # `sd_model` is not a module variable: every read goes through the model store
    if name == "sd_model":
        from modules import sd_models

        return sd_models.model_data.get_sd_model()
    raise AttributeError(f"module 'modules.shared' (fake) has no attribute {name!r}")
