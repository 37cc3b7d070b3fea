"""Secrets never reach the screen, a log or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cpo_cli.errors import RecipeError
from cpo_cli.recipe import load_recipe_dict, load_recipe_text, redacted_dict, to_yaml
from cpo_cli.recipe.secrets import looks_secret

TOKEN = "hf_abcdefghijklmnop"


@pytest.mark.parametrize(
    "name", ["hub_token", "HF_TOKEN", "WANDB_API_KEY", "db_password", "my-secret", "token"]
)
def test_looks_secret(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["hub_model_id", "tokenizer_name_or_path", "MODEL_DIR", "keys2"])
def test_does_not_look_secret(name: str) -> None:
    assert not looks_secret(name)


def test_hub_token_is_redacted() -> None:
    loaded = load_recipe_text(f"model: {{name_or_path: m}}\ntraining: {{hub_token: {TOKEN}}}\n")
    assert loaded.recipe.training.hub_token == TOKEN  # the engine still gets it
    text = to_yaml(loaded)
    assert TOKEN not in text
    assert yaml.safe_load(text)["training"]["hub_token"] == "***"
    assert TOKEN in to_yaml(loaded, redact=False)


def test_env_secret_is_redacted_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_KEY", TOKEN)
    monkeypatch.setenv("MODEL_DIR", "/models/x")
    loaded = load_recipe_text(
        "model: {name_or_path: '${oc.env:MODEL_DIR}'}\n"
        "training:\n  run_name: '${oc.env:MY_API_KEY}'\n  output_dir: 'out/${training.run_name}'\n"
    )
    data = redacted_dict(loaded.recipe)  # the recipe alone remembers its secret paths
    assert data["training"]["run_name"] == "***"
    assert data["training"]["output_dir"] == "out/***"  # a copy elsewhere is hidden too
    assert data["model"]["name_or_path"] == "/models/x"  # not a secret: left alone
    assert TOKEN not in to_yaml(loaded.recipe)


def test_secret_keys_inside_mappings() -> None:
    loaded = load_recipe_text(
        "model: {name_or_path: m}\ntraining: {model_init_kwargs: {token: abcdefgh}}\n"
    )
    assert redacted_dict(loaded)["training"]["model_init_kwargs"] == {"token": "***"}


def test_secrets_stay_out_of_error_messages() -> None:
    text = f"model: {{name_or_path: m}}\ntraining: {{hub_token: [{TOKEN}], betta: 1}}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text)
    joined = "\n".join(info.value.lines())
    assert TOKEN not in joined
    assert "training.hub_token: got ***; expected a string" in joined


def test_int_fields_named_like_tokens_are_not_redacted() -> None:
    loaded = load_recipe_text("model: {name_or_path: m}\n")
    assert redacted_dict(loaded)["training"]["label_pad_token_id"] == -100


def test_overrides_are_kept_redacted() -> None:
    loaded = load_recipe_text("model: {name_or_path: m}\n", [f"training.hub_token={TOKEN}"])
    assert loaded.recipe.training.hub_token == TOKEN
    assert loaded.overrides == ("training.hub_token=***",)


def test_bad_secret_override_is_not_echoed() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe_text("model: {name_or_path: m}\n", [f"training.hub_token=[{TOKEN}"])
    assert TOKEN not in "\n".join(info.value.lines())


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_", min_size=4, max_size=40))
def test_no_token_value_survives_redaction(secret: str) -> None:
    token = "hf_" + secret
    loaded = load_recipe_dict(
        {"model": {"name_or_path": "m"}, "training": {"hub_token": token, "run_name": token}}
    )
    assert token not in to_yaml(loaded)
    assert token not in str(redacted_dict(loaded))


# Token-shaped values are hidden wherever they sit: a mistyped key, a wrong field, the command
# line, an override without a key, or an argument click cannot place.
SHAPED = {
    "hf": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "openai": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
    "github": "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "aws": "AKIAABCDEFGHIJKLMNOP",
}


@pytest.mark.parametrize("token", SHAPED.values(), ids=SHAPED.keys())
def test_token_shaped_values_never_reach_an_error(token: str) -> None:
    text = (
        f"model: {{name_or_path: m}}\n"
        f"training: {{hub_tokn: {token}, learning_rate: {token}, report_to: [{token}]}}\n"
    )
    overrides = [f"training.hub_tokn2={token}", token, f"data.train.colums.prompt={token}"]
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, overrides)
    joined = "\n".join(info.value.lines())
    assert token not in joined
    assert "training.hub_tokn: unknown key (got '***'); did you mean 'training.hub_token'?" in (
        joined
    )
    assert "training.learning_rate: got '***'; expected a number" in joined
    assert "override '***': expected key=value" in joined


def test_token_shaped_values_are_redacted_when_saved() -> None:
    token = SHAPED["hf"]
    loaded = load_recipe_text(f"model: {{name_or_path: m}}\ntraining: {{run_name: x-{token}}}\n")
    assert loaded.recipe.training.run_name == f"x-{token}"
    assert yaml.safe_load(to_yaml(loaded))["training"]["run_name"] == "x-***"


def test_a_git_revision_is_not_a_token() -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    loaded = load_recipe_text(f"model: {{name_or_path: m, revision: '{revision}'}}\n")
    assert yaml.safe_load(to_yaml(loaded))["model"]["revision"] == revision


def test_the_cli_never_echoes_a_token(tmp_path: Path, cli: Any) -> None:
    token = SHAPED["hf"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: m}}\ntraining: {{hub_tokn: {token}}}\n")
    runs = [
        cli("recipe", "validate", str(recipe)),
        cli("train", str(recipe), f"training.oops={token}", token),
        cli("push", str(tmp_path), token),  # click's own usage error
    ]
    assert [r.exit_code for r in runs] == [1, 1, 2]
    assert "unexpected extra argument" in runs[2].stderr and "(***)" in runs[2].stderr
    assert not [r for r in runs if token in r.output]
