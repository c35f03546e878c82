"""Fake of the WebUI's launch.py: re-exports modules.launch_utils, as the real one does."""
from modules import launch_utils

args = launch_utils.args
python = launch_utils.python
git = launch_utils.git
index_url = launch_utils.index_url
dir_repos = launch_utils.dir_repos
run = launch_utils.run
is_installed = launch_utils.is_installed
run_pip = launch_utils.run_pip
