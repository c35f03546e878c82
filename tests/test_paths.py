"""dreambooth_core.paths: names are one plain path component, paths are expanded once,
resolved and kept under their roots; only folders this project made are deleted. The
CLI refuses hostile run names before anything is written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreambooth_core.config import load_config
from dreambooth_core.errors import ConfigError, UserError
from dreambooth_core.paths import (OutsideRoots, PathRefused, contained, make_owned_folder, real_path, remove_owned_folder,
                                   safe_name)
from hostile import HOSTILE_NAMES, NOT_TEXT, Canary

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", HOSTILE_NAMES + NOT_TEXT)
def test_a_hostile_name_is_refused_with_a_sentence(name):
    with pytest.raises(PathRefused) as info:
        safe_name(name, "output_name")
    assert str(info.value).startswith("output_name ")


@pytest.mark.parametrize("name", ["zwx_dog", "my dog", "Zwx-2.v1", "ünïcode_名前"])
def test_plain_names_pass(name):
    assert safe_name(f" {name} ", "output_name") == name


def test_contained_refuses_every_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "root"
    root.mkdir()
    canary = Canary(tmp_path)
    for value in canary.paths(root):
        with pytest.raises(PathRefused):
            contained(value, "folder", [root], base=root)
    assert contained("sub/../photos", "folder", [root], base=root) == root / "photos"
    assert contained("~/root/x", "folder", [root]) == root / "x"    # ~ expanded once, then checked
    canary.assert_intact()


def test_the_operator_switch_lets_absolute_paths_through_but_not_relative_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "root"
    root.mkdir()
    assert contained(str(tmp_path / "elsewhere"), "folder", [root], anywhere=True) == tmp_path / "elsewhere"
    assert contained("~/elsewhere", "folder", [root], base=root, anywhere=True) == tmp_path / "elsewhere"
    with pytest.raises(OutsideRoots, match="outside the folders"):
        contained("../elsewhere", "folder", [root], base=root, anywhere=True)


def test_real_path_expands_once_and_resolves_links(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert real_path("~/link", "x") == tmp_path / "target"
    assert real_path(str(tmp_path / "~"), "x") == tmp_path / "~"   # a ~ inside a path is a plain character


def test_only_folders_this_project_made_are_removed(tmp_path):
    own = make_owned_folder(tmp_path / "ours")
    (own / "a.png").write_bytes(b"x")
    remove_owned_folder(own)
    assert not own.exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    with pytest.raises(PathRefused, match="not made by dreambooth_core"):
        remove_owned_folder(theirs)
    link = tmp_path / "link"
    link.symlink_to(make_owned_folder(tmp_path / "ours2"))
    with pytest.raises(PathRefused):   # a link to one of ours is not ours
        remove_owned_folder(link)
    assert (theirs / "keep.txt").read_text() == "mine" and (tmp_path / "ours2").is_dir()


@pytest.mark.parametrize("key", ["output_name", "token", "class_noun"])
@pytest.mark.parametrize("value", ["../x", "/abs/x", "a/../../x", "~/x", "a\x00b"])
def test_config_refuses_names_that_would_become_paths(key, value):
    overrides = {"token": "zwx", "class_noun": "dog", key: value}
    with pytest.raises(ConfigError):
        load_config(overrides=overrides, check_paths=False)


@pytest.mark.parametrize("key", ["output_name", "token"])
def test_config_refuses_dot_names(key):
    with pytest.raises(ConfigError, match="plain name"):
        load_config(overrides={"token": "zwx", key: ".."}, check_paths=False)
    # a class noun only follows the token: "zwx_.." is one plain file name
    assert load_config(overrides={"token": "zwx", "class_noun": ".."}, check_paths=False).name == "zwx_.."


@pytest.mark.parametrize("value", NOT_TEXT + ["/x\x00y"])
def test_config_refuses_a_path_that_is_no_text(value):
    with pytest.raises(ConfigError, match="output_dir"):
        load_config(overrides={"output_dir": value}, check_paths=False)


def test_config_expands_home_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(overrides={"output_dir": "~/runs"}, check_paths=False).output_dir == str(tmp_path / "runs")


@pytest.mark.parametrize("setting", ["output_name=../canary", "output_name=/abs/x", "token=a/../../x", "output_name=.",
                                     "class_noun=../../canary", "output_name=~root/x"])
def test_cli_refuses_a_hostile_run_name_in_one_line(tmp_path, setting):
    photos = tmp_path / "runs" / "photos"
    photos.mkdir(parents=True)
    base = tmp_path / "runs" / "base.safetensors"
    base.write_bytes(b"{}")
    canary = Canary(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dreambooth_core", "train", "--preset", "lora", "--set", f"base_model={base}",
                           "--set", f"instance_data_dir={photos}", "--set", f"output_dir={tmp_path / 'runs'}",
                           "--set", setting], cwd=tmp_path / "runs", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "plain name" in last and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["base.safetensors", "photos"]
    canary.assert_intact()
