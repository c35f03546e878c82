"""The tab's "More settings" TOML box against the fake WebUI: any config key and [[concepts]]
tables reach the config; bad TOML, unknown keys and keys a form control owns are one clear
sentence; every path in it (concept folders, a dataset TOML and the folders it names) passes
the same gate as the image folder field."""
from __future__ import annotations

import sys

import pytest

from test_a1111_tab import form_values, press, subject_images, wait_done, webui  # noqa: F401  (fixture)


def config_of(w, **changes):
    form = w.adapter.form
    return form.build_config(form.Form.from_args(tuple(form_values(w, **changes))))


def two_concepts(first, second) -> str:
    return (f"validation_steps = 7\ncaption_extension = '.caption'\n\n"
            f"[[concepts]]\nimage_dir = '{first}'\ntoken = 'zwx'\nclass_noun = 'dog'\nrepeats = 3\n\n"
            f"[[concepts]]\nimage_dir = '{second}'\ntoken = 'qwv'\nclass_noun = 'painting'\nshuffle_caption = true\n")


def test_the_box_sits_in_the_advanced_section_and_starts_empty(webui):
    box = webui.tab.find("dbc_settings_toml")
    assert box.parent.elem_id == "dbc_advanced" and not box.value
    assert dict(zip(webui.adapter.form.FORM_KEYS, form_values(webui)))["settings_toml"] is None
    plain = config_of(webui)
    assert plain.concepts == [] and plain.instance_data_dir == str(webui.images)   # an empty box changes nothing


def test_any_key_and_concept_tables_reach_the_config(webui, tmp_path):
    style = subject_images(tmp_path / "style", 3)
    config = config_of(webui, images_dir="", settings_toml=two_concepts(webui.images, style))
    assert (config.validation_steps, config.caption_extension) == (7, ".caption")
    assert config.concepts == [
        dict(image_dir=str(webui.images), token="zwx", class_noun="dog", repeats=3),
        dict(image_dir=str(style), token="qwv", class_noun="painting", shuffle_caption=True),
    ]
    # the box's values win over the Advanced fields (it is the more specific input)
    assert config_of(webui, max_train_steps=5, settings_toml="max_train_steps = 9").max_train_steps == 9
    # the Train button runs it
    status, _ = press(webui, "dbc_train", images_dir="", settings_toml=two_concepts(webui.images, style))
    assert "dbc-error" not in status, status
    assert wait_done(webui)["status"] == "completed"


@pytest.mark.parametrize("text, message", [
    ("steps = = 3", "More settings: not valid TOML"),
    ("validaton_steps = 3", "unknown config key 'validaton_steps'"),
    ("base_model = '/x.safetensors'", "base_model is set by Base checkpoint"),
    ("output_dir = '/tmp'", "output_dir is set by the WebUI's runs folder"),
    ("resume_from = 'latest'", "resume_from is set by the Resume button"),
    ("max_token_length = 100", "max_token_length must be one of 75, 150, 225"),
    ("[[concepts]]\nimage_dir = 'x'\ncolour = 1", "unknown key(s) 'colour'"),
    ("[[concepts]]\ntoken = 'zwx'", "image_dir is not set"),
])
def test_bad_settings_are_one_sentence_and_start_nothing(webui, text, message):
    status, _ = press(webui, "dbc_train", settings_toml=text, images_dir="" if "concepts" in text else str(webui.images))
    assert "dbc-error" in status and message in status.replace("&#x27;", "'"), status
    assert webui.session.manager.list() == []


def test_a_shared_webui_confines_every_path_in_the_box(webui, tmp_path):
    from dreambooth_core.paths import OutsideRoots

    host = webui.adapter.host
    inside = subject_images(host.data_path() / "inputs" / "dog")
    outside = subject_images(tmp_path / "private")
    webui.shared.cmd_opts.webui_is_non_local = True   # --listen / --share
    cases = {
        r"concepts\[1\].image_dir": two_concepts(inside, outside),
        "instance_data_dir": f"instance_data_dir = '{outside}'",
        "class_data_dir": f"class_data_dir = '{outside}'",
        "dataset_config": f"dataset_config = '{tmp_path / 'kohya.toml'}'",
    }
    for what, text in cases.items():
        with pytest.raises(OutsideRoots, match=what):
            config_of(webui, images_dir=str(inside), settings_toml=text)
    # a dataset TOML inside the WebUI's folders that names a folder outside them
    kohya = host.data_path() / "inputs" / "kohya.toml"
    kohya.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{outside}'\nclass_tokens = 'zwx dog'\n")
    with pytest.raises(OutsideRoots, match=r"concepts\[0\].image_dir"):
        config_of(webui, images_dir="", settings_toml=f"dataset_config = '{kohya}'")
    # relative paths are read under the WebUI's folder, as the image field's are
    config = config_of(webui, images_dir="", settings_toml=two_concepts("inputs/dog", "inputs/dog"))
    assert [c["image_dir"] for c in config.concepts] == [str(inside)] * 2
    # the operator's setting opens other folders, for the box as for the field
    webui.shared.opts.set("dreambooth_core_any_folder", True)
    assert config_of(webui, images_dir="", settings_toml=two_concepts(inside, outside)).concepts[1]["image_dir"] == str(outside)


# ---- the concepts table ------------------------------------------------------------------------------

def test_the_concepts_table_is_a_common_subset_dataframe_that_starts_empty(webui):
    table = webui.tab.find("dbc_concepts")
    assert table.parent.elem_id == "dbc_advanced" and table.kwargs["type"] == "array"
    assert table.kwargs["headers"] == ["image folder", "token", "class noun", "repeats", "prior loss weight"]
    assert config_of(webui, concepts_table=[["", "", "", None, None]]).concepts == []   # a blank row is no concept
    # found in the real A1111 v1.10.1: both gradio versions start the table as one row of "" and 0 (numbers),
    # and the page sends it as it is: the tab's untouched table is no concept (Train and Plan memory work)
    assert table.value == [["", "", "", 0, 0]] and config_of(webui, concepts_table=table.value).concepts == []


def test_table_rows_become_concepts(webui, tmp_path):
    style = subject_images(tmp_path / "style", 3)
    rows = [[str(webui.images), "zwx", "dog", 3, 0.5], ["", "", "", "", ""], [f" {style} ", "qwv", "painting", 1.0, float("nan")]]
    config = config_of(webui, images_dir="", concepts_table=rows)
    assert config.concepts == [dict(image_dir=str(webui.images), token="zwx", class_noun="dog", repeats=3, prior_loss_weight=0.5),
                               dict(image_dir=str(style), token="qwv", class_noun="painting", repeats=1)]
    # with the TOML box's run-wide keys, and through the Train button
    config = config_of(webui, images_dir="", concepts_table=rows, settings_toml="shuffle_caption = true")
    assert config.shuffle_caption and len(config.concepts) == 2
    status, _ = press(webui, "dbc_train", images_dir="", concepts_table=rows)
    assert "dbc-error" not in status, status
    assert wait_done(webui)["status"] == "completed"


@pytest.mark.parametrize("rows, message", [
    ([["", "zwx", "dog", 1, 1.0]], "row 1: give the folder"),
    ([["PHOTOS", "zwx", "dog", 1.5, 1.0]], "row 1: repeats must be a whole number (got 1.5)"),
    ([["PHOTOS", "zwx", "dog", "many", 1.0]], "repeats must be a whole number (got 'many')"),
    ([["PHOTOS", "zwx", "dog", 0, 1.0]], "repeats must be 1 or more"),
    ([["PHOTOS/missing", "zwx", "dog", 1, 1.0]], "image_dir is not a folder"),
])
def test_bad_table_rows_are_one_sentence(webui, rows, message):
    rows = [[str(webui.images) + cell[6:] if cell.startswith("PHOTOS") else cell, *rest] for cell, *rest in rows]
    status, _ = press(webui, "dbc_train", images_dir="", concepts_table=rows)
    assert "dbc-error" in status and message in status.replace("&#x27;", "'"), status
    status, _ = press(webui, "dbc_train", concepts_table=[[str(webui.images), "zwx", "dog", 1, 1.0]],
                      settings_toml=f"[[concepts]]\nimage_dir = '{webui.images}'")
    assert "both in the concepts table and as [[concepts]]" in status
    # the folder field would be left out by the table: said, not ignored
    status, _ = press(webui, "dbc_train", concepts_table=[[str(webui.images), "zwx", "dog", 1, 1.0]])
    assert "the instance images would be left out" in status
    assert webui.session.manager.list() == []


def test_a_shared_webui_confines_the_tables_folders(webui, tmp_path):
    from dreambooth_core.paths import OutsideRoots

    inside = subject_images(webui.adapter.host.data_path() / "inputs" / "dog")
    outside = subject_images(tmp_path / "private")
    webui.shared.cmd_opts.webui_is_non_local = True
    with pytest.raises(OutsideRoots, match="concepts table, row 2, image folder"):
        config_of(webui, images_dir="", concepts_table=[[str(inside), "zwx", "dog", 1, 1.0], [str(outside), "qwv", "cat", 1, 1.0]])
    assert config_of(webui, images_dir="", concepts_table=[["inputs/dog", "zwx", "dog", 2, 1.0]]).concepts[0]["image_dir"] == str(inside)


def test_the_fake_dataframe_refuses_what_only_one_gradio_version_accepts():
    from a1111_fake import fake_webui

    with fake_webui.installed():
        import gradio as gr

        for only_one in (dict(type="polars"), dict(datatype=["str", "html"])):
            with pytest.raises(ValueError):
                gr.Dataframe(**only_one)
        for only_one in (dict(line_breaks=True), dict(max_rows=5), dict(container=False)):
            with pytest.raises(TypeError, match="not accepted by both"):
                gr.Dataframe(**only_one)


def test_a_webui_python_without_a_toml_reader_says_what_to_install(webui, monkeypatch):
    """The WebUI's own Python 3.10 may lack tomli (nothing is installed into it): one clear sentence."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    status, _ = press(webui, "dbc_train", settings_toml="validation_steps = 3")
    assert "needs the tomli package" in status and webui.session.manager.list() == []
    assert "dbc-error" not in press(webui, "dbc_train")[0]   # an empty box needs no TOML reader
