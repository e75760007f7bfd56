"""Loading a teacher: the shipped digits ViT, a timm model by name, a local checkpoint, or a BERT-family
text teacher (`shoal.data.train_text_teacher`'s description JSON, the built-in rotten-tomatoes one, or
a local Hugging Face encoder directory with a new head)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from shoal.errors import ModelError
from shoal.models.config import TeacherConfig, TextConfig, ViTConfig, config_from_timm
from shoal.utils.io import sha256_file

DEFAULT_TEACHER = "shoal-digits-vit"
FASHION_TEACHER = "shoal-fashion-mnist-vit"
# built-in teachers shipped in `shoal.data`: name -> file stem
BUILTIN_TEACHERS = {DEFAULT_TEACHER: "digits_vit", FASHION_TEACHER: "fashion_mnist_vit"}


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher and what shoal needs to know about it.

    Attributes:
        model: The timm VisionTransformer, or a `shoal.models.bert.TextClassifier`; eval mode, float32, on CPU.
        config: Its family (`ViTConfig` or `TextConfig`).
        source: What the user asked for: a timm name, a checkpoint path, a text teacher's JSON or
            encoder directory, or a built-in id.
        data_config: Input preprocessing (timm `resolve_data_config` keys, or the digits recipe; a
            text teacher: {"max_length": tokens}).
        meta: Whatever else the checkpoint's JSON recorded (metrics, recipe).
        tokenizer: A text teacher's tokenizer (None for a ViT).
    """

    model: nn.Module
    config: TeacherConfig
    source: str
    data_config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def is_text(self) -> bool:
        return isinstance(self.config, TextConfig)

    def vit(self, what: str) -> ViTConfig:
        """Its `ViTConfig`; `ModelError` naming `what` (a ViT-only method or input) for a text teacher."""
        if not isinstance(self.config, ViTConfig):
            raise ModelError(f"{what} works on vision (ViT) teachers; {self.source} is a text teacher "
                             "(plan it with --method coformer)")
        return self.config

    @property
    def is_default(self) -> bool:
        return self.source == DEFAULT_TEACHER

    @property
    def random_weights(self) -> bool:
        """A timm model created without pretrained weights or a checkpoint: fit for timing only."""
        return self.meta.get("weights") == "random"


def default_teacher_paths(name: str = DEFAULT_TEACHER) -> tuple[Path, Path]:
    """Paths of a shipped teacher's weights and JSON description (`BUILTIN_TEACHERS`)."""
    base = resources.files("shoal.data")
    stem = BUILTIN_TEACHERS[name]
    return tuple(Path(str(base.joinpath(f"{stem}{ext}"))) for ext in (".safetensors", ".json"))  # type: ignore[return-value]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file or a torch file (loaded with `weights_only=True`).

    Wrappers such as {"state_dict": ...} or {"model": ...} and a DDP "module." prefix are undone.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ModelError(f"unknown timm model {name!r}; see timm.list_models('vit_*') or 'deit_*'")
    if pretrained:
        cached = _create_from_cache(name, kwargs)
        if cached is not None:
            return cached
        if not _hub_reachable():
            raise ModelError(
                f"cannot fetch pretrained weights for {name!r}: the model hub is unreachable (offline?) and "
                "they are not in the local cache; pass --checkpoint FILE with local weights, or --no-pretrained")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        if pretrained:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            raise ModelError(
                f"cannot fetch pretrained weights for {name!r} ({reason}); without network pass "
                "--checkpoint FILE with local weights, or --no-pretrained") from None
        raise ModelError(f"timm cannot create {name!r}: {exc}".splitlines()[0]) from None


def _create_from_cache(name: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """The pretrained model from the local Hugging Face cache only, or None."""
    import os

    import timm

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants

        hf_offline, hf_constants.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE, True
    except Exception:  # no huggingface_hub: timm falls back to URLs
        hf_constants, hf_offline = None, None  # type: ignore[assignment]
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception:
        return None
    finally:
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = bool(hf_offline)
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds."""
    import os
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _finish(model: nn.Module, source: str, data_config: dict[str, Any], meta: dict[str, Any]) -> Teacher:
    config = config_from_timm(model, name=source)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, config, source, data_config, meta)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ModelError(f"checkpoint {source} does not match its architecture: {first}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"checkpoint {source} does not match its architecture: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}")


def load_teacher(
    model: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> Teacher:
    """Load a teacher ViT.

    Args:
        model: A timm model name (e.g. "deit_small_patch16_224"), a checkpoint file whose
            sibling `<stem>.json` describes it, a built-in teacher's name (`BUILTIN_TEACHERS`),
            or None for the shipped digits teacher.
        checkpoint: Local weights (safetensors or torch) for the timm `model`.
        pretrained: Fetch timm's pretrained weights when no checkpoint is given.
        model_kwargs: Extra timm `create_model` arguments (e.g. num_classes, img_size).

    Raises:
        ModelError: unknown name, unreachable hub, unreadable or mismatched checkpoint,
            unsupported architecture.
    """
    kwargs = dict(model_kwargs or {})
    if model is None and checkpoint is None:
        model = DEFAULT_TEACHER
    text = _text_source(model, checkpoint)
    if text is not None:
        return _load_text(text, source=str(model), num_classes=kwargs.get("num_classes"))
    if model in BUILTIN_TEACHERS and checkpoint is None:
        weights = default_teacher_paths(model)[0]
        if not weights.is_file():
            raise ModelError(f"built-in teacher {model} is not installed ({weights} is missing); train it with "
                             "`python -m shoal.data.train_teacher --task "
                             f"{model.removeprefix('shoal-').removesuffix('-vit')}`")
        return _load_described(weights, source=model)
    if model is not None and Path(model).suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return _load_described(Path(model), source=str(model), extra_kwargs=kwargs)
    if model is None:
        return _load_described(Path(checkpoint), source=str(checkpoint), extra_kwargs=kwargs)  # type: ignore[arg-type]
    net = _create_timm(model, pretrained=pretrained and checkpoint is None, kwargs=kwargs)
    if checkpoint is not None:
        _load_state(net, read_state_dict(Path(checkpoint)), str(checkpoint))
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=net)  # type: ignore[no-untyped-call]
    data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in resolved.items()}
    embed = getattr(net, "patch_embed", None)
    if embed is not None and hasattr(embed, "img_size"):  # the pretrained cfg may name another size
        data_config["input_size"] = [int(embed.proj.in_channels), *map(int, embed.img_size)]
    kind = "checkpoint" if checkpoint is not None else "pretrained" if pretrained else "random"
    return _finish(net, model, data_config, {"timm_model": model, "checkpoint": str(checkpoint or ""),
                                             "weights": kind, "timm_kwargs": kwargs})


def _text_source(model: str | None, checkpoint: str | Path | None) -> Path | None:
    """The text teacher's JSON or encoder directory `model` names, or None when it names a ViT."""
    from shoal.models.text_teacher import TEXT_TEACHER, TEXT_TEACHER_FILE

    if model is None:
        return None
    if model == TEXT_TEACHER:
        if not TEXT_TEACHER_FILE.is_file():
            raise ModelError(f"the built-in text teacher {TEXT_TEACHER} is made on this machine: run `make "
                             f"text-teacher` (it writes {TEXT_TEACHER_FILE})")
        return TEXT_TEACHER_FILE
    path = Path(model)
    if path.suffix == ".json" and path.is_file() and not _describes_text(path):
        raise ModelError(f"{path} is not a text teacher's description (no \"family\": \"bert\"); for a ViT pass its "
                         "weights file (.safetensors, with the JSON beside it)")
    if (path.suffix == ".json" and path.is_file()) or (path.is_dir() and (path / "config.json").is_file()):
        if checkpoint is not None:
            raise ModelError(f"{model} is a text teacher: it names its own weights; drop --checkpoint")
        return path
    return None


def _describes_text(path: Path) -> bool:
    """Whether a JSON file is a text teacher's description (`shoal.data.train_text_teacher` writes its family)."""
    try:
        return bool(json.loads(path.read_text()).get("family") == "bert")
    except (OSError, ValueError, AttributeError):
        return False


def _load_text(path: Path, source: str, num_classes: int | None) -> Teacher:
    """A fine-tuned text teacher (its description JSON), or an encoder directory with a random head."""
    from shoal.models.bert import TextClassifier, encoder_config
    from shoal.models.text_teacher import load_text_encoder, load_text_teacher

    if path.is_dir():
        if num_classes is None:
            raise ModelError(f"{path} is an encoder without a task head; name the data (its classes size the "
                             "head), or fine-tune it with `python -m shoal.data.train_text_teacher --model DIR`")
        encoder = load_text_encoder(path)
        model = TextClassifier(encoder.model, int(num_classes))
        hf: Any = encoder.model.config
        seq_len = min(128, int(hf.max_position_embeddings))
        meta: dict[str, Any] = {"weights": "random", "encoder": str(path)}
        tokenizer = encoder.tokenizer
    else:
        loaded = load_text_teacher(path)
        model, seq_len, tokenizer = loaded.model, loaded.max_length, loaded.encoder.tokenizer
        meta = {"weights": "fine-tuned", "encoder": loaded.encoder.source, "metrics": loaded.metrics,
                "classes": list(loaded.classes)}
    config = encoder_config(model.encoder, seq_len, model.head.out_features)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, config, source, {"max_length": seq_len}, meta, tokenizer)


def _load_described(weights: Path, source: str, extra_kwargs: dict[str, Any] | None = None) -> Teacher:
    """A checkpoint with a `<stem>.json` beside it: {"timm_model": name, "timm_kwargs": {...}, ...}."""
    desc_path = weights.with_suffix(".json")
    if not desc_path.is_file():
        raise ModelError(
            f"checkpoint {weights} has no description {desc_path.name} beside it; write "
            '{"timm_model": "<timm name>", "timm_kwargs": {...}} there, or pass --model NAME --checkpoint FILE')
    try:
        desc = json.loads(desc_path.read_text())
        name = desc["timm_model"]
        kwargs = dict(desc.get("timm_kwargs", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{desc_path} is not a valid teacher description ({exc})") from None
    kwargs.update(extra_kwargs or {})
    net = _create_timm(name, pretrained=False, kwargs=kwargs)
    expected = desc.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise ModelError(f"{weights} does not match the sha256 recorded in {desc_path.name}; the file was altered")
    _load_state(net, read_state_dict(weights), str(weights))
    data_config = desc.get("data", {})
    meta = {k: v for k, v in desc.items() if k not in ("timm_kwargs", "data")}
    return _finish(net, source, data_config, meta)
