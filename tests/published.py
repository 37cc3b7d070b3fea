"""A few rows in the exact published schema of each preference dataset cpo reads, and writers
for the containers the Hub ships them in. Where each schema comes from:

- HuggingFaceH4/ultrafeedback_binarized: dataset card `dataset_info` (prompt, prompt_id,
  chosen/rejected/messages as {content, role} lists, score_chosen, score_rejected); splits
  train_prefs/test_prefs as `data/{split}-00000-of-00001.parquet`.
- princeton-nlp/llama3-ultrafeedback-armorm: card `dataset_info` (prompt_id, prompt,
  all_generated_responses, all_rm_scores, chosen, rejected); `data/train-*`, `data/test-*`.
- trl-lib/ultrafeedback_binarized: chosen/rejected conversations (implicit prompt),
  score_chosen, score_rejected, `data/train-00000-of-00001.parquet`.
- argilla/dpo-mix-7k: dataset, chosen/rejected conversations, chosen_rating, rejected_rating.
- Anthropic/hh-rlhf: card and repository: `{helpful,harmless}-base/train.jsonl.gz`, one
  `{"chosen", "rejected"}` transcript pair per line, `\\n\\nHuman: ...\\n\\nAssistant: ...`.
- Intel/orca_dpo_pairs: `orca_rlhf.jsonl` with system (often ""), question, chosen, rejected.
- jondurbin/truthy-dpo-v0.1: `truthy-dpo.parquet` with id, source, system, prompt, chosen,
  rejected.
- openbmb/UltraFeedback: source, instruction, models, completions (a list of structs: model,
  principle, custom_system_prompt, response, annotations, critique, overall_score,
  fine-grained_score), correct_answers, incorrect_answers (H4's create_dataset.py reads
  `c["overall_score"]`, `c["response"]`).
- nvidia/HelpSteer3: card `configs` (preference: `preference/{train,validation}.jsonl.gz`);
  domain, language, context ({role, content} list ending with a user turn), response1,
  response2, overall_preference (-3..3, < 0: response1 better), individual_preference.
- haoranxu/ALMA-R-Preference: card `dataset_info` per config (cs-en, de-en, is-en, ru-en,
  zh-en; `{config}/train-*` parquet): one `translation` struct with Delta, language_pair,
  required_directions, the two sentences under their codes, gpt4_/alma_ outputs and
  {ref,gpt4,alma}_{lang}_{kiwi,xcomet,kiwi_xcomet} scores.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def msg(role: str, content: str) -> dict[str, str]:
    return {"content": content, "role": role}  # the cards list content first


def h4_ultrafeedback() -> list[Row]:
    """HuggingFaceH4/ultrafeedback_binarized (train_prefs): the user turn repeats `prompt`."""
    rows = []
    for i, (q, good, bad) in enumerate(
        [
            ("What is 2 + 2?", "It is 4.", "It is 5."),
            ("Name a primary colour.", "Red is one.", "Green, maybe."),
            ("Say hi in French.", "Bonjour !", "Hola."),
        ]
    ):
        rows.append(
            {
                "prompt": q,
                "prompt_id": f"{i:064x}",
                "chosen": [msg("user", q), msg("assistant", good)],
                "rejected": [msg("user", q), msg("assistant", bad)],
                "messages": [msg("user", q), msg("assistant", good)],
                "score_chosen": 8.0,
                "score_rejected": 5.0,
            }
        )
    return rows


def armorm() -> list[Row]:
    """princeton-nlp/llama3-ultrafeedback-armorm."""
    rows = []
    for i, (q, answers, scores) in enumerate(
        [
            (
                "Write a haiku about rain.",
                ["Soft rain on the roof", "Rain.", "Wet."],
                [0.9, 0.2, 0.1],
            ),
            ("Why is the sky blue?", ["Rayleigh scattering.", "Paint.", "Magic."], [0.8, 0.1, 0.3]),
        ]
    ):
        best, worst = answers[scores.index(max(scores))], answers[scores.index(min(scores))]
        rows.append(
            {
                "prompt_id": f"{i:064x}",
                "prompt": q,
                "all_generated_responses": answers,
                "all_rm_scores": scores,
                "chosen": [msg("user", q), msg("assistant", best)],
                "rejected": [msg("user", q), msg("assistant", worst)],
            }
        )
    return rows


def trl_ultrafeedback() -> list[Row]:
    """trl-lib/ultrafeedback_binarized: implicit prompt in the conversations."""
    return [
        {
            "chosen": [msg("user", "Capital of France?"), msg("assistant", "Paris.")],
            "rejected": [msg("user", "Capital of France?"), msg("assistant", "Lyon.")],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        },
        {
            "chosen": [msg("user", "3 * 3?"), msg("assistant", "9")],
            "rejected": [msg("user", "3 * 3?"), msg("assistant", "6")],
            "score_chosen": 10.0,
            "score_rejected": 1.0,
        },
    ]


def dpo_mix() -> list[Row]:
    """argilla/dpo-mix-7k: multi-turn conversations with a system turn."""
    system = msg("system", "You are terse.")
    return [
        {
            "dataset": "capybara",
            "chosen": [system, msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Bye?"),
                       msg("assistant", "Goodbye.")],
            "rejected": [system, msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Bye?"),
                         msg("assistant", "No.")],
            "chosen_rating": 5.0,
            "rejected_rating": 2.0,
        }
    ]  # fmt: skip


HH_PROMPT_1 = (
    "\n\nHuman: What are some good fruits?\n\nAssistant: Apples and pears."
    "\n\nHuman: Which is sweeter?"
)


def hh_rlhf() -> list[Row]:
    """Anthropic/hh-rlhf: whole transcripts; the last Assistant turn differs."""
    return [
        {
            "chosen": HH_PROMPT_1 + "\n\nAssistant: Pears, usually.",
            "rejected": HH_PROMPT_1 + "\n\nAssistant: I don't know.",
        },
        {
            "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for nine minutes.",
            "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Microwave it.",
        },
    ]


def orca_dpo_pairs() -> list[Row]:
    """Intel/orca_dpo_pairs (orca_rlhf.jsonl): `system` is often empty."""
    return [
        {
            "system": "You are an AI assistant. Think step by step.",
            "question": "Is 7 prime?",
            "chosen": "Yes: its only divisors are 1 and 7.",
            "rejected": "No.",
        },
        {
            "system": "",
            "question": "Translate 'cat' to German.",
            "chosen": "Katze",
            "rejected": "Hund",
        },
    ]


def truthy_dpo() -> list[Row]:
    """jondurbin/truthy-dpo-v0.1 (truthy-dpo.parquet)."""
    return [
        {
            "id": "04c275bf738fd391b7fe25e25fe7bed3",
            "source": "truthy_dpo",
            "system": "You are an unbiased, uncensored, helpful assistant.",
            "prompt": "Do we only use 10% of our brains?",
            "chosen": "No, that is a myth.",
            "rejected": "Yes, only ten percent.",
        }
    ]


def _completion(model: str, response: str, overall: float | None) -> Row:
    return {
        "annotations": {"helpfulness": [{"Rating": "4", "Rationale": "ok", "Type": ["1"]}]},
        "critique": "Fine.",
        "custom_system_prompt": "Be helpful.",
        "fine-grained_score": 4.0,
        "model": model,
        "overall_score": overall,
        "principle": "helpfulness",
        "response": response,
    }


def ultrafeedback_raw() -> list[Row]:
    """openbmb/UltraFeedback: four scored completions per instruction."""
    return [
        {
            "source": "evol_instruct",
            "instruction": "Give a synonym for 'happy'.",
            "models": ["gpt-4", "alpaca-7b", "falcon-40b-instruct", "vicuna-33b"],
            "completions": [
                _completion("gpt-4", "Joyful.", 8.5),
                _completion("alpaca-7b", "Sad.", 2.0),
                _completion("falcon-40b-instruct", "Glad.", 7.0),
                _completion("vicuna-33b", "Content.", 6.5),
            ],
            "correct_answers": ["None"],
            "incorrect_answers": ["None"],
        },
        {
            "source": "flan_v2",
            "instruction": "Is water wet?",
            "models": ["gpt-4", "alpaca-7b"],
            "completions": [
                _completion("gpt-4", "It makes things wet.", 7.0),
                _completion("alpaca-7b", "Yes.", 7.0),
            ],
            "correct_answers": ["None"],
            "incorrect_answers": ["None"],
        },
    ]


def helpsteer3() -> list[Row]:
    """nvidia/HelpSteer3 preference: < 0 means response1 is better; 0 is a tie."""
    user = msg("user", "Write a Python one-liner that reverses a string s.")
    return [
        {
            "domain": "code",
            "language": "python",
            "context": [user],
            "response1": "s[::-1]",
            "response2": "reversed(s)",
            "overall_preference": -2,
            "individual_preference": [{"score": -2, "reasoning": "@Response 1 is correct."}],
        },
        {
            "domain": "general",
            "language": "english",
            "context": [
                msg("user", "Hi!"),
                msg("assistant", "Hello!"),
                msg("user", "Tell a joke."),
            ],
            "response1": "No.",
            "response2": "Why did the chicken cross the road?",
            "overall_preference": 3,
            "individual_preference": [{"score": 3, "reasoning": "@Response 2 tells one."}],
        },
        {
            "domain": "general",
            "language": "english",
            "context": [msg("user", "Say yes.")],
            "response1": "Yes.",
            "response2": "Yes!",
            "overall_preference": 0,
            "individual_preference": [{"score": 0, "reasoning": "Same."}],
        },
    ]


def alma_r(pair: str = "de-en") -> list[Row]:
    """haoranxu/ALMA-R-Preference, config `pair` (de-en: `de` source, `en` reference)."""
    a, b = pair.split("-")

    def row(sent_a: str, sent_b: str, outputs: dict[str, str], scores: dict[str, float],
            delta: float = 0.0, required: str = "") -> Row:  # fmt: skip
        tr: Row = {"Delta": delta, a: sent_a, b: sent_b, "language_pair": pair,
                   "required_directions": required}  # fmt: skip
        for key, value in outputs.items():
            tr[key] = value
        for key, value in scores.items():
            for scorer, shift in (("kiwi", 0.0), ("xcomet", 0.02), ("kiwi_xcomet", 0.01)):
                tr[f"{key}_{scorer}"] = value + shift
        return {"translation": tr}

    return [
        row(
            "Das Haus ist blau.",
            "The house is blue.",
            {f"gpt4_{b}": "The house is blue!", f"alma_{b}": "House blue.",
             f"gpt4_{a}": "Das Haus ist blau!", f"alma_{a}": "Haus blau."},
            {f"ref_{b}": 0.80, f"gpt4_{b}": 0.90, f"alma_{b}": 0.50,
             f"ref_{a}": 0.95, f"gpt4_{a}": 0.70, f"alma_{a}": 0.60},
        ),
        row(
            "Guten Morgen.",
            "Good morning.",
            {f"gpt4_{b}": "Good morning!", f"alma_{b}": "Good morning.",
             f"gpt4_{a}": "Guten Morgen!", f"alma_{a}": "Morgen."},
            {f"ref_{b}": 0.70, f"gpt4_{b}": 0.70, f"alma_{b}": 0.70,
             f"ref_{a}": 0.90, f"gpt4_{a}": 0.80, f"alma_{a}": 0.40},
            required=f"{b}-{a}",
        ),
        row(
            "Ich bin müde.",
            "I am tired.",
            {f"gpt4_{b}": "I'm tired.", f"alma_{b}": "I am sleepy.",
             f"gpt4_{a}": "Ich bin müde!", f"alma_{a}": "Ich müde."},
            {f"ref_{b}": 0.90, f"gpt4_{b}": 0.60, f"alma_{b}": 0.95,
             f"ref_{a}": 0.90, f"gpt4_{a}": 0.60, f"alma_{a}": 0.95},
            delta=1.0,
        ),
    ]  # fmt: skip


# ---- containers -------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[Row]) -> Path:
    """`.jsonl`, or `.jsonl.gz` / `.bz2` / `.xz` / `.zst` by the name's ending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(compress(path, data))
    return path


def write_json(path: Path, rows: list[Row]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(path, json.dumps(rows, ensure_ascii=False).encode("utf-8")))
    return path


def compress(path: Path, data: bytes) -> bytes:
    name = path.name
    if name.endswith(".gz"):
        return gzip.compress(data)
    if name.endswith(".bz2"):
        return bz2.compress(data)
    if name.endswith(".xz"):
        return lzma.compress(data)
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def write_parquet(path: Path, rows: list[Row]) -> Path:
    """A parquet file as `datasets` writes Hub shards (nested structs and lists kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_readme(folder: Path, configs: dict[str, dict[str, str]]) -> None:
    """A dataset card whose YAML `configs:` maps config -> {split: file pattern}."""
    lines = ["---", "configs:"]
    for i, (name, splits) in enumerate(configs.items()):
        lines.append(f"- config_name: {name}")
        if i == 0:
            lines.append("  default: true")
        lines.append("  data_files:")
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    lines += ["---", "", "# A dataset card", ""]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
