"""modules.launch_utils, for extension installers: `args` (the launcher's command line),
`python`, and `run_pip`, which here installs nothing. Each request is kept in `recorded`
and, when $FAKE_LAUNCH_RECORD names a file, appended to it as a JSON line — so a test, even
one running install.py in a subprocess, can prove nothing was asked of the WebUI's pip."""
import argparse
import json
import os
import sys

from modules import paths_internal

args = argparse.Namespace(ui_settings_file=os.path.join(paths_internal.data_path, "config.json"),
                          data_dir=paths_internal.data_path, skip_install=False, skip_prepare_environment=False)
python = sys.executable
recorded = []   # [("pip", argument string), ...]


def _note(kind, text):
    recorded.append((kind, text))
    log = os.environ.get("FAKE_LAUNCH_RECORD")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            print(json.dumps({"kind": kind, "command": text}), file=out)


def run_pip(command, desc=None, live=False):
    """Would run `python -m pip <command>`; returns without a trace under --skip-install."""
    if not args.skip_install:
        _note("pip", command)
    return ""
