"""modules.options: `OptionInfo` (one setting's description) and `Options` (the settings,
read as attributes). Constructors take the WebUI's parameter names; of the rest, only
what the adapter's settings page and the tests look at is kept."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.section = default, label, section
        self.restrict_api = restrict_api
        self.component, self.component_args = component, component_args
        self.explanations = []   # what .info() added, in order

    def info(self, info):
        """Adds a line of explanation under the setting; returns the same object."""
        self.explanations.append(info)
        return self


class Options:
    """Setting values by key: the stored value, else the registered default. Reading a key
    that was never registered raises AttributeError (so `getattr(opts, key, None)` works)."""

    def __init__(self, data_labels, restricted_opts):
        vars(self).update(data_labels=data_labels, restricted_opts=restricted_opts,
                          data={key: info.default for key, info in data_labels.items()})

    def __getattr__(self, key):
        own = vars(self)
        if key in own["data"]:
            return own["data"][key]
        if key in own["data_labels"]:
            return own["data_labels"][key].default
        raise AttributeError(f"no setting {key!r}")

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """Stores a value for a known setting; False (and nothing stored) for an unknown one, or
        for one registered with restrict_api when the change comes through the API (as the WebUI's /sdapi/v1/options)."""
        known = key in self.data_labels or key in self.data
        if known and is_api and getattr(self.data_labels.get(key), "restrict_api", False):
            return False
        if known:
            self.data[key] = value
        return known
