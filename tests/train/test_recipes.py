"""Every shipped recipe (and each stage of a curriculum) parses, names existing data sources
and builds its model."""

import pytest

from yoco.data.sources import list_documents
from yoco.tokenizer import load_tokenizer
from yoco.train.config import shipped_recipes
from yoco.train.curriculum import load_stages
from yoco.train.loop import build_model

RECIPES = list(shipped_recipes().values())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid(recipe, tmp_path):
    for stage in load_stages(recipe, tmp_path / "run"):
        config = stage.config
        tokenizer = load_tokenizer(config.tokenizer.path)
        model = build_model(config.model, len(tokenizer))
        assert model.config.max_position_embeddings >= config.data.seq_len
        for source in config.data.sources:
            assert list_documents(source.path)


def test_recipes_are_found():
    assert {"quickstart.toml", "needle.toml", "needle-gret.toml"} <= {p.name for p in RECIPES}


def test_the_needle_gret_stages_share_one_shape(tmp_path):
    """The needle stage starts from the copy stage's weights: same parameters, the cross-decoder's
    positions dropped."""
    copy, needle = load_stages("needle-gret", tmp_path / "run")
    first, last = (build_model(s.config.model, 256) for s in (copy, needle))
    assert {k: v.shape for k, v in first.state_dict().items()} == {
        k: v.shape for k, v in last.state_dict().items()
    }
    assert first.config.cross_decoder_positions and not last.config.cross_decoder_positions
    assert needle.config.train.init_from == str(tmp_path / "run" / "stages" / "copy")
