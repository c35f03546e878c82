import json

import pytest
from transformers import CLIPTokenizer

from dreambooth_core.errors import FamilyError
from dreambooth_core.families import CLIP_BPE_DIR, FAMILIES, get_family


def test_every_family_ships_its_component_configs():
    for fam in FAMILIES.values():
        index = json.loads((fam.config_dir / "model_index.json").read_text())
        for component in ("unet", "vae", "scheduler", *fam.text_encoders, *fam.tokenizers):
            assert component in index, (fam.name, component)
        assert fam.scheduler_config()["prediction_type"] == fam.prediction_type
        for te, dim in zip(fam.text_encoders, fam.context_dims):
            assert json.loads((fam.config_dir / te / "config.json").read_text())["hidden_size"] == dim


def test_shipped_clip_tokenizer_matches_clip_ids():
    tok = CLIPTokenizer(str(CLIP_BPE_DIR / "vocab.json"), str(CLIP_BPE_DIR / "merges.txt"))
    # Known CLIP ids: bos, "a", "photo", "of", "a", "cat", eos.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_family_aliases_and_unknown_name():
    assert get_family("SD1.5").name == "sd1"
    assert get_family("sd2_v").prediction_type == "v_prediction"
    with pytest.raises(FamilyError, match="use one of"):
        get_family("sd3")
