"""Architecture registry, pretrained / local weights, and checkpoints.

Every architecture is a builder registered under a name (timm style); adding one, e.g. a timm
ConvNeXt, is one entry::

    @register_model("convnext_tiny", head="head.fc")
    def convnext_tiny(num_classes, image_size, pretrained):
        return timm.create_model("convnext_tiny", pretrained=pretrained, num_classes=num_classes)

``build_model(name, ...)`` validates the arguments, calls the builder and, when asked, loads a
local state dict. Builders never use data-dependent control flow, so models stay traceable by
``torch.fx.symbolic_trace`` (the quantization engine uses FX graph mode).

ViT patch size: on small face crops a 4x4 grid of patches (``image_size // 4``, at most 16 px) keeps
the token count at 16 for 32-64 px inputs, which keeps ViT-Small trainable on a laptop CPU;
224 px inputs get the standard 16 px patches (196 tokens). See ``vit_patch_size``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from results import atomic_write

logger = logging.getLogger(__name__)

Builder = Callable[[int, int, bool], nn.Module]
WeightsAdapter = Callable[[dict, nn.Module], dict]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder and what loading foreign weights needs to know."""

    builder: Builder
    head: str | None = None  # classifier parameter prefix, re-initialised for other class counts
    min_image_size: int = 1
    has_pretrained: bool = True
    adapt_weights: WeightsAdapter | None = None  # e.g. resample ViT position embeddings


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, head: str | None = None, min_image_size: int = 1,
                   has_pretrained: bool = True, adapt_weights: WeightsAdapter | None = None
                   ) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, image_size, pretrained) -> nn.Module`` under ``name``.

    ``head`` is the parameter-name prefix of the classifier (e.g. ``'fc'``): weights files whose
    head has another class count load with that head re-initialised. ``adapt_weights(state_dict,
    model)`` converts foreign weights first (e.g. resampling ViT patch / position embeddings).
    """
    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered; pick another name")
        _REGISTRY[name] = ModelSpec(builder, head, min_image_size, has_pretrained, adapt_weights)
        return builder
    return decorator


def list_models() -> list[str]:
    """Names accepted by ``build_model``, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ValueError listing the known names if there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(list_models())}. "
                         "Register a new one with @register_model(name).")
    return _REGISTRY[name]


def build_model(name: str, num_classes: int = 2, image_size: int = 32, pretrained: bool = False,
                weights_path: str | os.PathLike | None = None) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` classes and square ``image_size`` inputs.

    ``pretrained=True`` loads the upstream ImageNet weights (torchvision ``weights='DEFAULT'`` or
    timm ``pretrained=True``); without network access this raises FileNotFoundError telling where
    to put the file. ``weights_path`` loads a local state dict (or a ``save_checkpoint`` file)
    instead; a classifier head whose shape does not fit ``num_classes`` is re-initialised.
    """
    spec = model_spec(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < spec.min_image_size:
        raise ValueError(f"image_size for '{name}' must be an int >= {spec.min_image_size}, "
                         f"got {image_size!r}; use a larger image_size")
    if pretrained and weights_path is not None:
        raise ValueError("pass either pretrained=True or weights_path=..., not both")
    if pretrained and not spec.has_pretrained:
        raise ValueError(f"'{name}' has no pretrained weights; use pretrained=False")
    model = spec.builder(num_classes, image_size, pretrained)
    if weights_path is not None:
        load_weights(model, _read_state_dict(weights_path), name)
    return model


def load_weights(model: nn.Module, state_dict: dict, name: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` (architecture ``name``) in place.

    Tensors of the classifier head whose shape differs (another class count) keep the model's
    fresh initialisation, with a log line; any other mismatch raises ValueError.
    """
    spec = model_spec(name)
    if spec.adapt_weights is not None:
        state_dict = spec.adapt_weights(state_dict, model)
    own = model.state_dict()
    mismatched = [key for key, value in state_dict.items()
                  if key in own and tuple(value.shape) != tuple(own[key].shape)]
    outside_head = [key for key in mismatched
                    if spec.head is None or not key.startswith(spec.head)]
    if outside_head:
        shapes = "; ".join(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                           for k in outside_head[:5])
        raise ValueError(f"weights do not fit '{name}' ({shapes}); check the architecture "
                         "and image_size the file was saved with")
    if mismatched:
        logger.info("'%s': re-initialised %s for %d classes (shape differs in the weights file)",
                    name, ", ".join(mismatched), own[mismatched[0]].shape[0])
    state_dict = {**state_dict, **{key: own[key] for key in mismatched}}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"weights do not fit '{name}': {err}") from None
    return model


def _read_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass the path of a saved "
                                "state dict (torch.save(model.state_dict(), path))")
    loaded = _torch_load(path, "cpu")
    return loaded["state_dict"] if isinstance(loaded, dict) and "state_dict" in loaded else loaded


def _torch_load(path: Path, map_location):
    """``torch.load`` of tensors and plain values only, with a clear error for other files."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable torch file of tensors ({err}); save weights "
                         "with torch.save(model.state_dict(), path)") from None


@contextlib.contextmanager
def _explain_download_failure(name: str, how_to_place: str):
    try:
        yield
    except Exception as err:  # downloads fail in many ways (URLError, hub errors, bad hash)
        raise FileNotFoundError(
            f"could not get pretrained weights for '{name}' ({type(err).__name__}: {err}). "
            f"Without network access, {how_to_place}; or pass weights_path='<state dict file>' "
            "to build_model, or use pretrained=False") from None


# ---- architectures --------------------------------------------------------------------------

def _torchvision_model(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    model = torchvision.models.get_model(arch, num_classes=num_classes)
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        with _explain_download_failure(arch, f"download {weights.url} and save it as {cached}"):
            state_dict = weights.get_state_dict(progress=False, check_hash=True)
        load_weights(model, state_dict, arch)
    return model


@register_model("resnet50", head="fc")
def resnet50(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision ResNet-50 (23.5M parameters for 2 classes)."""
    return _torchvision_model("resnet50", num_classes, pretrained)


@register_model("mobilenet_v2", head="classifier.1")
def mobilenet_v2(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision MobileNetV2 (2.2M parameters for 2 classes)."""
    return _torchvision_model("mobilenet_v2", num_classes, pretrained)


@register_model("efficientnet_b0", head="classifier.1")
def efficientnet_b0(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision EfficientNet-B0 (4.0M parameters for 2 classes)."""
    return _torchvision_model("efficientnet_b0", num_classes, pretrained)


# Three stride-2 stages shrink the map so that below 17 px the last pooling gets an empty input.
@register_model("squeezenet1_1", head="classifier.1", min_image_size=17)
def squeezenet1_1(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision SqueezeNet 1.1 (0.7M parameters for 2 classes) without the ReLU on its logits.

    Upstream clamps the final conv's outputs at 0; trained from scratch on small images (a 1x1
    final map) most samples start with every logit at 0, no gradient flows and the model stays
    at the majority class. The ReLU has no weights, so pretrained weights load unchanged.
    """
    model = _torchvision_model("squeezenet1_1", num_classes, pretrained)
    model.classifier[2] = nn.Identity()
    return model


def vit_patch_size(image_size: int) -> int:
    """Patch size giving a 4x4 token grid on small images, capped at the standard 16 px."""
    patch = min(16, max(1, image_size // 4))
    if image_size % patch:
        raise ValueError(f"ViT needs image_size divisible by its patch size {patch}, got "
                         f"{image_size}; use e.g. 16, 32, 48, 64 or 224")
    return patch


@register_model("vit_small", head="head", adapt_weights=checkpoint_filter_fn)
def vit_small(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """timm ViT-Small (embed 384, depth 12, 6 heads) with patches from ``vit_patch_size``."""
    upstream = "vit_small_patch16_224"
    hub_id = timm.models.get_pretrained_cfg(upstream).hf_hub_id
    how_to_place = f"put the Hugging Face hub files of '{hub_id}' in the local HF cache (HF_HOME)"
    with (_explain_download_failure("vit_small", how_to_place) if pretrained
          else contextlib.nullcontext()):
        return timm.create_model(upstream, pretrained=pretrained, num_classes=num_classes,
                                 img_size=image_size, patch_size=vit_patch_size(image_size))


@register_model("tiny_vit", head="head", has_pretrained=False, adapt_weights=checkpoint_filter_fn)
def tiny_vit(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """A two-block, 32-wide timm VisionTransformer for fast tests."""
    return VisionTransformer(img_size=image_size, patch_size=vit_patch_size(image_size),
                             embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=num_classes)


class TinyCNN(nn.Module):
    """Three conv-bn-relu blocks, global average pooling and a linear head (~4k parameters)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (8, 16, 16)):
        super().__init__()
        blocks, in_channels = [], 3
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks += [nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            in_channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("tiny_cnn", head="classifier", has_pretrained=False)
def tiny_cnn(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """A few-thousand-parameter CNN for fast tests."""
    return TinyCNN(num_classes)


# ---- sizes and checkpoints --------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def fp32_size_mib(model: nn.Module) -> float:
    """Size of the parameters stored as float32, in MiB (2**20 bytes)."""
    return count_parameters(model) * 4 / 2**20


def _plain_value(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise ValueError(f"checkpoint meta value {value!r} ({type(value).__name__}) is not a plain "
                     "str/number/bool/None/list/dict; convert it before save_checkpoint")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta) -> Path:
    """Atomically write ``{'state_dict', 'meta'}`` to ``path`` (temp file, then rename).

    Put ``arch``, ``num_classes`` and ``image_size`` in ``meta`` so that
    ``load_model_from_checkpoint`` can rebuild the model; metrics may go there too.
    """
    plain_meta = json.loads(json.dumps(meta, default=_plain_value))
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return atomic_write(path, lambda temp: torch.save({"state_dict": state_dict, "meta": plain_meta}, temp))


def export_torchscript(model: nn.Module, path: str | os.PathLike, image_size: int) -> Path:
    """Trace ``model`` (e.g. a real INT8 model) on CPU and write it as TorchScript, atomically:
    ``torch.jit.load(path)`` runs it without this code base."""
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        traced = torch.jit.trace(model.cpu().eval(), example)
    return atomic_write(path, lambda temp: torch.jit.save(traced, temp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[dict, dict]:
    """Read a ``save_checkpoint`` file; returns ``(state_dict, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the baseline first "
                                "(python main.py --phase baseline) or fix the path")
    loaded = _torch_load(path, map_location)
    if not isinstance(loaded, dict) or not {"state_dict", "meta"} <= loaded.keys():
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint (expected a dict "
                         "with 'state_dict' and 'meta'); use build_model(weights_path=...) "
                         "for a bare state dict")
    return loaded["state_dict"], loaded["meta"]


def load_model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``path`` (meta must hold arch, num_classes, image_size)."""
    state_dict, meta = load_checkpoint(path)
    missing = [key for key in ("arch", "num_classes", "image_size") if key not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} lacks meta {missing}; save it with "
                         "save_checkpoint(model, path, arch=..., num_classes=..., image_size=...)")
    model = build_model(meta["arch"], num_classes=meta["num_classes"],
                        image_size=meta["image_size"])
    model.load_state_dict(state_dict)
    return model, meta
