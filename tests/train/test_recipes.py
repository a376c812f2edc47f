"""Every shipped recipe parses, names existing data sources and builds its model."""

import pytest

from yoco.data.sources import list_documents
from yoco.tokenizer import load_tokenizer
from yoco.train.config import load_config, shipped_recipes
from yoco.train.loop import build_model

RECIPES = list(shipped_recipes().values())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid(recipe):
    config = load_config(recipe)
    tokenizer = load_tokenizer(config.tokenizer.path)
    model = build_model(config.model, len(tokenizer))
    assert model.config.max_position_embeddings >= config.data.seq_len
    for source in config.data.sources:
        assert list_documents(source.path)


def test_recipes_are_found():
    assert {"quickstart.toml", "needle.toml"} <= {p.name for p in RECIPES}
