"""Fake of modules/launch_utils.py: what extension installers use. `run_pip`/`run` record
each command (and append it as a JSON line to $FAKE_LAUNCH_RECORD) instead of running it."""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys

from modules.paths_internal import data_path, script_path  # noqa: F401

args = argparse.Namespace(ui_settings_file=os.path.join(data_path, "config.json"), data_dir=data_path,
                          skip_install=False, skip_prepare_environment=False)
python = sys.executable
git = "git"
index_url = ""
dir_repos = "repositories"
recorded = []


def _record(kind, command):
    recorded.append((kind, command))
    path = os.environ.get("FAKE_LAUNCH_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps([kind, command]) + "\n")


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    _record("run", command)
    return ""


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return
    _record("pip", f'"{python}" -m pip {command} --prefer-binary')
    return ""
