"""Generates docs/recipe-reference.md from the schema: every field with its type, default,
engine status and description, so the reference cannot drift from the code.

    python -m cpo_cli.recipe.docs           # rewrite docs/recipe-reference.md
    python -m cpo_cli.recipe.docs --check   # exit 1 if the committed file is stale
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cpo_cli.losses.registry import LOSSES
from cpo_cli.recipe.schema import DataSource, ModelSection, PeftSection
from cpo_cli.recipe.status import field_status
from cpo_cli.recipe.training import CPO_EXTENSIONS, TrainingConfig

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "recipe-reference.md"
REGENERATE = "python -m cpo_cli.recipe.docs"


def type_name(annotation: Any) -> str:
    """A readable type: `int | None`, `'keep_end' | 'keep_start'`, `list[str]`."""
    if annotation is type(None) or annotation is None:
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        key, value = args
        key_text = "str" if typing.get_origin(key) is typing.Literal else type_name(key)
        return f"mapping[{key_text}, {type_name(value)}]"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], prefix: str, with_status: bool) -> list[str]:
    head = "| field | type | default |" + (" status |" if with_status else "") + " description |"
    rule = "|---|---|---|" + ("---|" if with_status else "") + "---|"
    rows = [head, rule]
    for name, info in model.model_fields.items():
        cells = [f"`{prefix}.{name}`", _cell(type_name(info.annotation)), _cell(default_text(info))]
        if with_status:
            status = field_status(name)
            text = status.label if status.honoured else f"{status.label}: {status.reason}"
            cells.append(_cell(text))
        description = info.description or ""
        if name in CPO_EXTENSIONS:
            description = f"**Beyond CPOConfig.** {description}"
        cells.append(_cell(description))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render() -> str:
    """The whole reference document."""
    n_cpo = len(TrainingConfig.model_fields) - len(CPO_EXTENSIONS)
    out = [
        "# Recipe reference",
        "",
        f"<!-- Generated from the schema by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "A recipe is a YAML file with four fixed top-level keys: `model`, `data` (`train`, "
        "`eval`), `peft` (optional) and `training`. It is loaded in a fixed order: YAML, then "
        "`key=value` overrides from the command line (`cpo train r.yaml training.beta=0.2`), "
        "then interpolations (`${training.output_dir}`, `${oc.env:VAR}`, "
        "`${oc.env:VAR,default}`), then validation. Unknown keys are refused with a "
        "suggestion, and every problem is reported at once. `cpo recipe validate FILE...` "
        "checks recipes; `cpo recipe show FILE` prints one resolved; `cpo recipe schema` "
        "prints the JSON Schema for editors.",
        "",
        "Secrets (`training.hub_token`, `training.push_to_hub_token`, any key that looks like "
        "a token, and any value read from an environment variable whose name looks like one, "
        "e.g. `${oc.env:HF_TOKEN}`) are shown as `***` wherever cpo prints or saves a recipe.",
        "",
        "## model",
        "",
        *_table(ModelSection, "model", with_status=False),
        "",
        "## data",
        "",
        "`data.train` and `data.eval` are each a source with these keys (both optional in the "
        "file; `cpo train` needs `data.train`, evaluation needs `data.eval`).",
        "",
        *_table(DataSource, "data.train", with_status=False),
        "",
        "## peft",
        "",
        "Absent or `null`: full fine-tuning. Present: LoRA adapters (needs the `peft` extra).",
        "",
        *_table(PeftSection, "peft", with_status=False),
        "",
        "## training",
        "",
        f"All {n_cpo} fields of the seed's `CPOConfig`, with the same names and defaults, plus "
        f"{', '.join(f'`{n}`' for n in CPO_EXTENSIONS)} (marked **Beyond CPOConfig**). Status "
        "says what the cpo engine does with a field: *honoured*, or *not applicable* with the "
        "reason. A not-applicable field set to a value other than its default is a warning "
        "when the recipe loads, or an error where ignoring it would change the run "
        "(*error if set*).",
        "",
        *_table(TrainingConfig, "training", with_status=True),
        "",
        "## Loss types",
        "",
        "`training.loss_type` names one entry of the loss registry. Setting a knob that the "
        "chosen loss does not read is a warning.",
        "",
        "| loss_type | what it is | knobs read besides beta | log-probs | paper |",
        "|---|---|---|---|---|",
    ]
    for spec in LOSSES.values():
        knobs = ", ".join(f"`{k}`" for k in spec.knobs) or "-"
        logps = "averaged per token" if spec.averages_logps else "summed"
        out.append(f"| `{spec.name}` | {_cell(spec.summary)} | {knobs} | {logps} | {spec.paper} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale; regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
