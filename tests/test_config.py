import dataclasses

import pytest

from llm_edit.core.config import ConfigError, build_config, load_config, parse_set, read_recipe, recipes_dir
from llm_edit.editing.methods import METHODS
from llm_edit.unlearning.methods import UNLEARNERS

CONFIGS = {**{m: spec.config for m, spec in METHODS.items()}, **{m: u.config for m, u in UNLEARNERS.items()}}


def _all_recipes():
    return [(m, p) for m in CONFIGS for p in sorted((recipes_dir() / m).glob("*.yaml"))]


def test_every_method_has_a_recipe_for_every_model_alias():
    from llm_edit.core.models import ALIASES

    wanted = {a.recipe for a in ALIASES.values()}
    assert {"tiny", "smollm2-135m", "gemma3-270m"} <= wanted
    for method in CONFIGS:
        assert wanted <= {p.stem for p in (recipes_dir() / method).glob("*.yaml")}, method


def test_there_are_recipes():
    assert _all_recipes()


@pytest.mark.parametrize("method, path", _all_recipes(), ids=lambda x: getattr(x, "name", x))
def test_every_recipe_validates(method, path):
    config = build_config(CONFIGS[method], read_recipe(path), str(path))
    if method in METHODS:  # every key is spelt out in editing recipes, so a reader sees all the values in use
        assert set(read_recipe(path)) == {f.name for f in dataclasses.fields(config)}


def test_unknown_key_fails_with_a_suggestion(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("layer: 1\nv_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'v_lrr'.*did you mean 'v_lr'"):
        load_config(METHODS["rome"].config, "rome", recipe=path)


def test_wrong_type_names_file_and_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("layer: 1\nv_lr: fast\n")
    with pytest.raises(ConfigError, match=r"r.yaml: v_lr: expected a number"):
        load_config(METHODS["rome"].config, "rome", recipe=path)
    path.write_text("layer: one\n")  # a layer is a block index or "auto"
    with pytest.raises(ConfigError, match=r"r.yaml: layer must be a block index or 'auto'"):
        load_config(METHODS["rome"].config, "rome", recipe=path)


def test_set_overrides_are_parsed_and_validated():
    assert parse_set(["layer=3", "kl_prompts=['{} is a', '{} was']", "v_lr=0.1"]) == {
        "layer": 3, "kl_prompts": ["{} is a", "{} was"], "v_lr": 0.1}
    config, _ = load_config(METHODS["rome"].config, "rome", recipe="tiny", sets=["layer=2", "v_lr=1"])
    assert config.layer == 2 and config.v_lr == 1.0
    with pytest.raises(ConfigError, match="--set: unknown key 'layr'"):
        load_config(METHODS["rome"].config, "rome", recipe="tiny", sets=["layr=2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["layer"])


def test_invalid_values_fail_validation():
    with pytest.raises(ConfigError, match="kl_prompts"):
        load_config(METHODS["rome"].config, "rome", recipe="tiny", overrides={"kl_prompts": ["no slot"]})


def test_missing_recipe_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available"):
        load_config(METHODS["rome"].config, "rome", recipe="nope")
    with pytest.raises(ConfigError, match="pass --recipe"):
        load_config(METHODS["rome"].config, "rome")
