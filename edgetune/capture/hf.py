"""Hugging Face model folders: ``config.json``, safetensors weights and ``tokenizer.json``,
loaded with ``transformers`` (``pip install 'edgetune[text]'``) from the folder alone.

Nothing is fetched (the hub is switched off while loading) and no code from the folder runs:
a config that names its own classes (``auto_map``, which ``trust_remote_code`` would import)
is refused, and so are pickled weights (``pytorch_model.bin``). The model is built from the
class ``config.json``'s ``architectures`` names, with eager attention (the form edgetune
captures), and wrapped so that its forward takes what a tokenizer gives and returns one
tensor: the logits of a ``*For...`` head, else the last hidden state, or, for a
sentence-transformers folder (``modules.json``), its pooled and normalized embedding.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune.errors import InputError

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def is_hf_folder(spec: str | Path) -> bool:
    path = Path(spec)
    return path.is_dir() and (path / CONFIG).is_file()


def folder_tokenizer(spec: str | Path) -> str | None:
    """The folder's own tokenizer.json, when the model is a Hugging Face folder that has one,
    or an .onnx file beside one (how optimum and transformers' exports lay a model out)."""
    path = Path(spec)
    if path.suffix == ".onnx" and path.is_file() and (path.parent / TOKENIZER).is_file():
        return str(path.parent / TOKENIZER)
    return str(path / TOKENIZER) if is_hf_folder(path) and (path / TOKENIZER).is_file() else None


def load_hf_folder(path: Path) -> nn.Module:
    config = _config(path)
    if "auto_map" in config:
        raise InputError(
            f"{path} names its own model code (auto_map in config.json), which needs trust_remote_code",
            "edgetune never runs code from a model folder: give a model of a class transformers ships",
        )
    if not list(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        if pickled:
            raise InputError(
                f"{path} holds pickled weights ({', '.join(sorted(pickled))}) and no .safetensors",
                "save the model with save_pretrained(..., safe_serialization=True): edgetune reads no pickle",
            )
        raise InputError(f"{path} holds no weights (no .safetensors file)", "save the model with save_pretrained into the folder")
    try:
        import transformers
    except ImportError:
        raise InputError("a Hugging Face model folder is loaded with transformers", "pip install 'edgetune[text]'") from None
    names = config.get("architectures") or ["AutoModel"]
    model_class = getattr(transformers, str(names[0]), None)
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        raise InputError(f"transformers {transformers.__version__} has no model class {names[0]}", "check config.json's architectures")
    with _offline(), _quiet(transformers):
        try:
            model = model_class.from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False, attn_implementation="eager"
            )
        except Exception as exc:  # transformers raises many kinds (OSError, ValueError, KeyError, ...)
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise InputError(f"transformers cannot load {path}: {text}", "check the folder (config.json and its weights)") from None
    takes = inspect.signature(model.forward).parameters
    wrapper = WithTokenTypes if "token_type_ids" in takes else HuggingFaceModel
    wrapped = wrapper(model)
    pooling = sentence_pooling(path)
    if pooling is not None:
        wrapped.pooling, wrapped.normalize = pooling
    return wrapped.eval()


def sentence_pooling(path: Path) -> tuple[str, bool] | None:
    """A sentence-transformers folder's pooling (modules.json, read as JSON: no module named in
    it is imported): "mean" or "cls" over the last hidden state, and whether an L2
    normalization follows. None for a plain transformers folder."""
    if not (path / "modules.json").is_file():
        return None
    try:
        modules = json.loads((path / "modules.json").read_text())
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
        config = json.loads((path / kinds["Pooling"] / "config.json").read_text()) if "Pooling" in kinds else None
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the sentence-transformers modules of {path} ({exc})", "check modules.json and 1_Pooling/") from None
    if config is None:
        return None
    modes = [mode for mode in ("mean", "cls") if config.get(f"pooling_mode_{'mean_tokens' if mode == 'mean' else 'cls_token'}")]
    others = [
        key
        for key, on in config.items()
        if key.startswith("pooling_mode_") and on and key not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token")
    ]
    if len(modes) != 1 or others:
        raise InputError(
            f"{path}: sentence-transformers pooling {sorted(k for k, on in config.items() if on is True)}", "use mean or CLS pooling"
        )
    return modes[0], "Normalize" in kinds


class HuggingFaceModel(nn.Module):
    """A transformers model whose forward takes ids and a mask and returns one tensor: the
    logits, the last hidden state, or (a sentence-transformers folder) its pooled embedding."""

    pooling: str | None = None  # "mean" (over the mask) or "cls"
    normalize = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return self._first(output, input_ids, attention_mask)

    def _first(self, output: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = getattr(output, "logits", None)
        if logits is not None:
            return logits
        hidden = output.last_hidden_state
        if self.pooling is None:
            return hidden
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # sentence-transformers' mean over the tokens the mask keeps
            weights = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class WithTokenTypes(HuggingFaceModel):
    """The same, for models that also take token types (BERT, not DistilBERT)."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True)
        return self._first(output, input_ids, attention_mask)


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path / CONFIG} ({exc})", "give a folder that save_pretrained wrote") from None
    if not isinstance(config, dict):
        raise InputError(f"{path / CONFIG} is not a JSON object", "give a folder that save_pretrained wrote")
    return config


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The hub switched off: a folder that lacks a file fails instead of fetching it."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own warnings (unused weights of a pretraining head) and progress bars stay off stderr."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
