"""Architecture registry, name resolution, pretrained / local weights, and checkpoints.

A model is named in one of four ways (docs/models.md):

- a registered name, e.g. ``resnet50`` or ``tiny_cnn`` (``list_models()``);
- ``timm:<name>``: any model ``timm.create_model`` builds, e.g. ``timm:test_resnet``;
- ``torchvision:<name>``: any classification model ``torchvision.models.get_model`` builds,
  e.g. ``torchvision:mobilenet_v3_small``;
- ``<module>:<function>``: a builder in the user's own code, e.g. ``mymodels:build``, called as
  ``function(num_classes=..., image_size=..., pretrained=...)``. This imports and runs that
  module, by the user's choice of name.

Every name resolves to a ``ModelSpec`` (builder, classifier head prefix, pretrained files), so
the rest of the framework cannot tell them apart. Adding a registered architecture is one
entry::

    @register_model("convnext_atto", head="head.fc")
    def convnext_atto(num_classes, image_size, pretrained):
        return timm.create_model("convnext_atto", num_classes=num_classes)

``build_model(name, ...)`` validates the arguments, calls the builder and, when asked, loads
ImageNet weights from a local file (nothing is ever downloaded) or a trained state dict.
Registered builders never use data-dependent control flow, so they stay traceable by
``torch.fx.symbolic_trace`` (the quantization engine uses FX graph mode); resolved names are
only as traceable as the library's model (docs/models.md lists what is known).

ViT patch size: on small face crops a 4x4 grid of patches (``image_size // 4``, at most 16 px) keeps
the token count at 16 for 32-64 px inputs, which keeps ViT-Small trainable on a laptop CPU;
224 px inputs get the standard 16 px patches (196 tokens). See ``vit_patch_size``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import safetensors.torch
import timm
import torch
import torchvision
from huggingface_hub import try_to_load_from_cache  # timm's own dependency
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from results import atomic_write

logger = logging.getLogger(__name__)

Builder = Callable[[int, int, bool], nn.Module]
WeightsAdapter = Callable[[dict, nn.Module], dict]

PREFIXES = ("timm", "torchvision")
"""Name prefixes that resolve to a library's model; any other ``a:b`` is ``<module>:<function>``."""

# ---- error messages: the bad value, what was expected, the fix ------------------------------

NAMING_HELP = ("Other ways to name a model: 'timm:<name>' (any timm model; list them with "
               "timm.list_models()), 'torchvision:<name>' (any torchvision classification model; "
               "torchvision.models.list_models(module=torchvision.models)), or "
               "'<module>:<function>' (your builder function(num_classes, image_size, pretrained) "
               "in an importable module, e.g. 'mymodels:build'). See docs/models.md")
UNKNOWN_MODEL = ("unknown model '{name}'{suggestion}; known models: {known}. " + NAMING_HELP
                 + "; or register one with @register_model(name).")
BAD_MODEL_NAME = ("model name {name!r} is malformed: expected a registered name (letters, digits, "
                  "'_' and '.'), 'timm:<name>', 'torchvision:<name>' or '<module>:<function>' "
                  "with a dotted module path and a function name. " + NAMING_HELP)
NOT_A_TIMM_MODEL = ("'{name}': '{arch}' is not a timm model{suggestion}; list them with "
                    "python -c \"import timm; print(timm.list_models('{pattern}'))\"")
NOT_A_TORCHVISION_MODEL = ("'{name}': '{arch}' is not a torchvision classification model"
                           "{suggestion}; list them with python -c \"import torchvision; "
                           "print(torchvision.models.list_models(module=torchvision.models))\"")
MODULE_NOT_IMPORTABLE = ("'{name}': cannot import module '{module}' ({error}); put {file} in the "
                         "folder you run from, or add its folder to PYTHONPATH")
NOT_A_BUILDER = ("'{name}': module '{module}' ({path}) has no callable '{function}' "
                 "(found {found}); define def {function}(num_classes, image_size, pretrained) "
                 "-> nn.Module there")
NOT_A_MODULE = ("'{name}': the builder returned {found}, expected a torch.nn.Module; return the "
                "model from {function}(num_classes, image_size, pretrained)")
BAD_REGISTERED_NAME = ("cannot register model {name!r}: registered names use letters, digits, '_' "
                       "and '.' only (':' marks 'timm:', 'torchvision:' and '<module>:<function>' "
                       "names; '-' is kept for arch_slug); rename it, e.g. {fixed!r}")
NO_HEAD = ("'{name}': its classifier layer '{prefix}' is not in the built model (a feature "
           "encoder without a classifier?); pick a classification model, or wrap it in your own "
           "'<module>:<function>' builder that adds an nn.Linear head")
PRETRAINED_FILE_MISSING = ("pretrained weights for '{name}' not found: none of {files} is in "
                           "{folders}. Nothing is downloaded: get {source} and save it as "
                           "{target}; or pass weights_path='<state dict file>' to build_model, or "
                           "use pretrained=False")
WEIGHTS_FILE_MISSING = ("weights file {path} does not exist; pass the path of a saved state dict "
                        "(torch.save(model.state_dict(), path)) or of a save_checkpoint file")
UNSAFE_WEIGHTS_FILE = ("{path} holds Python objects besides tensors ({detail}); it is refused "
                       "because unpickling them could run arbitrary code. Save only the tensors: "
                       "torch.save(model.state_dict(), path) or models.save_checkpoint(model, "
                       "path, ...)")
NOT_A_WEIGHTS_FILE = ("{path} is not a readable torch file of tensors ({error}); save weights with "
                      "torch.save(model.state_dict(), path)")
WEIGHTS_SHAPES_DIFFER = ("weights do not fit '{name}' ({shapes}); check the architecture and "
                         "image_size the file was saved with")
WEIGHTS_KEYS_DIFFER = ("weights do not fit '{name}': {details}; check that the file was saved from "
                       "the same architecture (model.state_dict())")


@dataclass(frozen=True)
class PretrainedFiles:
    """Where the ImageNet weights of an architecture are looked for (never downloaded).

    ``names``: accepted file names, looked for in ``weights_dir`` and then in torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``); the first is the one suggested. ``hf_hub_id``: a Hugging
    Face hub repository whose already-cached ``model.safetensors`` / ``pytorch_model.bin`` is
    also accepted. ``source``: where a user gets the file by hand.
    """

    names: tuple[str, ...]
    source: str
    hf_hub_id: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: its builder and what loading foreign weights needs to know."""

    builder: Builder
    # classifier parameter prefix(es), re-initialised for other class counts
    head: str | tuple[str, ...] | None = None
    min_image_size: int = 1
    has_pretrained: bool = True
    adapt_weights: WeightsAdapter | None = None  # e.g. resample ViT position embeddings
    pretrained_files: PretrainedFiles | None = None  # None: the builder handles pretrained itself


_REGISTRY: dict[str, ModelSpec] = {}
_RESOLVED: dict[str, ModelSpec] = {}  # prefixed names, resolved once per process
_REGISTERED_NAME = re.compile(r"[A-Za-z0-9_.]+")
_DOTTED_MODULE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")


def register_model(name: str, *, head: str | tuple[str, ...] | None = None,
                   min_image_size: int = 1, has_pretrained: bool = True,
                   adapt_weights: WeightsAdapter | None = None,
                   pretrained_files: PretrainedFiles | None = None
                   ) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, image_size, pretrained) -> nn.Module`` under ``name``.

    ``head`` is the parameter-name prefix of the classifier (e.g. ``'fc'``): weights files whose
    head has another class count load with that head re-initialised. ``adapt_weights(state_dict,
    model)`` converts foreign weights first (e.g. resampling ViT patch / position embeddings).
    ``pretrained_files``: where ``pretrained=True`` finds the ImageNet weights; the builder is
    then called with ``pretrained=False`` and the file loaded into its model.
    """
    if not isinstance(name, str) or not _REGISTERED_NAME.fullmatch(name):
        fixed = re.sub(r"[^A-Za-z0-9_.]", "_", str(name))
        raise ValueError(BAD_REGISTERED_NAME.format(name=name, fixed=fixed))

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered; pick another name")
        _REGISTRY[name] = ModelSpec(builder, head, min_image_size, has_pretrained, adapt_weights,
                                    pretrained_files)
        return builder
    return decorator


def list_models() -> list[str]:
    """Registered names, sorted (``timm:``, ``torchvision:`` and ``module:function`` names are
    accepted by ``build_model`` too)."""
    return sorted(_REGISTRY)


# ---- names ------------------------------------------------------------------------------------

def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _split_name(name) -> tuple[str, str, str]:
    """``(kind, first, second)`` of a prefixed name by its syntax alone: kind ``timm`` /
    ``torchvision`` (first: the library's model name) or ``module`` (first: module path,
    second: function). ValueError for an unregistered plain name or a malformed one."""
    if not isinstance(name, str) or name.count(":") > 1:
        raise ValueError(BAD_MODEL_NAME.format(name=name))
    if ":" not in name:
        raise ValueError(UNKNOWN_MODEL.format(name=name, suggestion=_suggest(name, _REGISTRY),
                                              known=", ".join(list_models())))
    prefix, rest = name.split(":")
    if prefix in PREFIXES and _REGISTERED_NAME.fullmatch(rest):
        return prefix, rest, ""
    if prefix not in PREFIXES and _DOTTED_MODULE.fullmatch(prefix) and rest.isidentifier():
        return "module", prefix, rest
    raise ValueError(BAD_MODEL_NAME.format(name=name))


def arch_slug(name: str) -> str:
    """A filesystem-safe, readable form of a model name for paths and config ids.

    Registered names are unchanged; the one ':' of a prefixed name becomes '-'
    (``timm:resnet18`` -> ``timm-resnet18``, ``mypkg.models:build`` -> ``mypkg.models-build``).
    Valid names never hold '-', so the slug is injective (``name = slug.replace('-', ':')``).
    Checks the syntax only: nothing is imported.
    """
    if isinstance(name, str) and _REGISTERED_NAME.fullmatch(name):
        return name
    _split_name(name)
    return name.replace(":", "-")


def check_model_name(name: str) -> None:
    """ValueError unless ``name`` resolves to a model, without building it.

    ``timm:`` and ``torchvision:`` names are looked up in the library's model lists; a
    ``module:function`` name imports the module (running its top-level code) and checks that
    the function is callable.
    """
    if isinstance(name, str) and (name in _REGISTRY or name in _RESOLVED):
        return
    kind, first, second = _split_name(name)
    if kind == "timm":
        _check_timm_name(name, first)
    elif kind == "torchvision":
        _check_torchvision_name(name, first)
    else:
        _user_builder(name, first, second)


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name`` (registered, or resolved from its prefix and cached); ValueError
    listing the known names and the naming rules if it resolves to nothing."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    if not isinstance(name, str) or name not in _RESOLVED:
        check_model_name(name)
        kind, first, second = _split_name(name)
        resolve = {"timm": _timm_spec, "torchvision": _torchvision_spec, "module": _user_spec}[kind]
        _RESOLVED[name] = resolve(name, first, second)
    return _RESOLVED[name]


# ---- timm: ------------------------------------------------------------------------------------

def _check_timm_name(name: str, arch: str) -> None:
    base = arch.split(".")[0]
    if not timm.is_model(base):
        raise ValueError(NOT_A_TIMM_MODEL.format(
            name=name, arch=arch, suggestion=_suggest(base, timm.list_models()),
            pattern=f"*{base[:4]}*"))
    if "." in arch:  # a pretrained tag, e.g. resnet18.a1_in1k
        tags = timm.list_pretrained(f"{base}.*")
        if arch not in tags:
            raise ValueError(NOT_A_TIMM_MODEL.format(
                name=name, arch=arch, suggestion=_suggest(arch, tags), pattern=f"{base}.*"))


def _timm_spec(name: str, arch: str, _: str) -> ModelSpec:
    cfg = timm.models.get_pretrained_cfg(arch)
    base = arch.split(".")[0]

    def make(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
        if cfg is None or not cfg.fixed_input_size:
            return timm.create_model(base, num_classes=num_classes)
        return _fixed_size_timm_model(base, num_classes, image_size)

    head = cfg.classifier if cfg is not None and cfg.classifier else _find_head(make, name)
    entry = timm.models.model_entrypoint(base)
    adapt = getattr(sys.modules[entry.__module__], "checkpoint_filter_fn", None)
    files = None
    if cfg is not None and (cfg.hf_hub_id or cfg.url):
        files = PretrainedFiles((f"{arch}.safetensors", f"{arch}.pth"),
                                cfg.url or f"https://huggingface.co/{cfg.hf_hub_id}",
                                cfg.hf_hub_id or None)
    return ModelSpec(_with_head(make, head, name), head, has_pretrained=files is not None,
                     adapt_weights=adapt, pretrained_files=files)


def _fixed_size_timm_model(base: str, num_classes: int, image_size: int) -> nn.Module:
    """A ViT-like timm model whose position table is sized for ``image_size``, with
    ``dynamic_img_size`` off where the model has it (``test_vit``): resampling the table at run
    time branches on the input's shape, which ``torch.fx.symbolic_trace`` cannot follow."""
    try:
        return timm.create_model(base, num_classes=num_classes, img_size=image_size,
                                 dynamic_img_size=False)
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise
        return timm.create_model(base, num_classes=num_classes, img_size=image_size)


# ---- torchvision: -----------------------------------------------------------------------------

def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _check_torchvision_name(name: str, arch: str) -> None:
    if arch not in _torchvision_names():
        raise ValueError(NOT_A_TORCHVISION_MODEL.format(
            name=name, arch=arch, suggestion=_suggest(arch, _torchvision_names())))


def _torchvision_files(arch: str) -> PretrainedFiles | None:
    """The file torchvision itself would download for ``weights='DEFAULT'``."""
    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, KeyError, AttributeError):
        return None
    return PretrainedFiles((Path(urlparse(url).path).name,), url)


def _torchvision_spec(name: str, arch: str, _: str) -> ModelSpec:
    sized = arch.startswith("vit_")  # torchvision's ViTs take image_size (224 otherwise)

    def make(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
        extra = {"image_size": image_size} if sized else {}
        return torchvision.models.get_model(arch, num_classes=num_classes, **extra)

    head = _find_head(make, name)
    files = _torchvision_files(arch)
    return ModelSpec(_with_head(make, head, name), head, has_pretrained=files is not None,
                     adapt_weights=_resample_torchvision_vit if sized else None,
                     pretrained_files=files)


def _resample_torchvision_vit(state_dict: dict, model: nn.Module) -> dict:
    """Interpolate a torchvision ViT's position embeddings to the model's image size."""
    if "encoder.pos_embedding" not in state_dict:
        return state_dict
    return interpolate_embeddings(model.image_size, model.patch_size, state_dict)


# ---- module:function --------------------------------------------------------------------------

def _import_user_module(module_name: str):
    """Import the user's module; the current folder is searched last when it is not on
    sys.path already (``python /elsewhere/main.py`` run from the folder of mymodels.py)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        if err.name != module_name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _user_builder(name: str, module_name: str, function_name: str) -> Callable:
    try:
        module = _import_user_module(module_name)
    except ImportError as err:
        file = module_name.replace(".", "/") + ".py"
        raise ValueError(MODULE_NOT_IMPORTABLE.format(name=name, module=module_name, error=err,
                                                      file=file)) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(NOT_A_BUILDER.format(
            name=name, module=module_name, path=getattr(module, "__file__", "?"),
            function=function_name, found=type(function).__name__ if function is not None
            else "nothing"))
    return function


def _user_spec(name: str, module_name: str, function_name: str) -> ModelSpec:
    function = _user_builder(name, module_name, function_name)

    def make(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
        model = function(num_classes=num_classes, image_size=image_size, pretrained=pretrained)
        if not isinstance(model, nn.Module):
            raise TypeError(NOT_A_MODULE.format(name=name, found=type(model).__name__,
                                                function=function_name))
        return model

    head = _find_head(make, name)
    return ModelSpec(_with_head(make, head, name), head)


# ---- classifier heads -------------------------------------------------------------------------

_PROBE_CLASSES = 997  # a class count no other layer's width is likely to equal


def _out_dim(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def _find_head(builder: Builder, name: str) -> str | tuple[str, ...] | None:
    """The classifier of ``builder``'s model: timm's ``get_classifier()``, else every Linear or
    conv whose width follows ``num_classes`` (torchvision's ``fc``, ``classifier.1``,
    ``heads.head``; auxiliary heads too), else the last Linear. The model is built once on the
    meta device (no memory, no weights) with an odd class count to tell the head apart."""
    try:
        with torch.device("meta"):
            model = builder(_PROBE_CLASSES, 224, False)
    except Exception:  # noqa: BLE001 - code that cannot run on meta builds for real
        model = builder(_PROBE_CLASSES, 224, False)
    named = dict(model.named_modules())
    if hasattr(model, "get_classifier"):
        found = [key for key, module in named.items() if module is model.get_classifier()]
        if found:
            return found[0]
    heads = [key for key, module in named.items() if _out_dim(module) == _PROBE_CLASSES]
    if not heads:
        heads = [key for key, module in named.items() if isinstance(module, nn.Linear)][-1:]
    if not heads:
        logger.warning("'%s': no classifier head found (no Linear layer); weights files with "
                       "another class count will not load", name)
        return None
    return heads[0] if len(heads) == 1 else tuple(heads)


def _head_prefixes(head: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if head is None else (head,) if isinstance(head, str) else tuple(head)


def _in_head(key: str, head: str | tuple[str, ...] | None) -> bool:
    return any(key == p or key.startswith(p + ".") for p in _head_prefixes(head))


def _with_head(make: Builder, head, name: str) -> Builder:
    """``make`` followed by ``_fit_head``: the head always has ``num_classes`` outputs."""
    def builder(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
        return _fit_head(make(num_classes, image_size, pretrained), head, num_classes, name)
    return builder


def _fit_head(model: nn.Module, head, num_classes: int, name: str) -> nn.Module:
    """Replace each head layer whose width is not ``num_classes`` by a fresh one that is."""
    for prefix in _head_prefixes(head):
        try:
            layer = model.get_submodule(prefix)
        except AttributeError:
            raise ValueError(NO_HEAD.format(name=name, prefix=prefix)) from None
        width = _out_dim(layer)
        if width is None or width == num_classes:
            continue
        if isinstance(layer, nn.Linear):
            fresh = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
        else:
            fresh = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size, layer.stride,
                              layer.padding, bias=layer.bias is not None)
        parent, _, child = prefix.rpartition(".")
        setattr(model.get_submodule(parent), child, fresh.to(layer.weight.device))
        logger.info("'%s': resized head %s from %d to %d outputs", name, prefix, width, num_classes)
    return model


# ---- building and weights ---------------------------------------------------------------------

def build_model(name: str, num_classes: int = 2, image_size: int = 32, pretrained: bool = False,
                weights_path: str | os.PathLike | None = None, *,
                weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` classes and square ``image_size`` inputs.

    ``pretrained=True`` loads the ImageNet weights from a local file (``find_pretrained_file``:
    ``weights_dir``, then torch's hub cache); nothing is downloaded, and a missing file raises
    FileNotFoundError naming the file and the folder to put it in. ``weights_path`` loads a
    trained state dict (or a ``save_checkpoint`` file) instead. Either way a classifier head
    whose shape does not fit ``num_classes`` is re-initialised.
    """
    spec = model_spec(name)
    _check_build_arguments(name, spec, num_classes, image_size, pretrained, weights_path)
    local_file = None
    if pretrained and spec.pretrained_files is not None:
        local_file = find_pretrained_file(name, weights_dir)
    model = spec.builder(num_classes, image_size, pretrained and local_file is None)
    for path in (local_file, weights_path):
        if path is not None:
            load_weights(model, read_state_dict(path), name)
    return model


def _check_build_arguments(name: str, spec: ModelSpec, num_classes, image_size, pretrained,
                           weights_path) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < spec.min_image_size:
        raise ValueError(f"image_size for '{name}' must be an int >= {spec.min_image_size}, "
                         f"got {image_size!r}; use a larger image_size")
    if pretrained and weights_path is not None:
        raise ValueError("pass either pretrained=True or weights_path=..., not both")
    if pretrained and not spec.has_pretrained:
        raise ValueError(f"'{name}' has no pretrained weights; use pretrained=False")


def pretrained_folders(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for pretrained files, in order: ``weights_dir`` (when given), then
    torch's hub cache ``$TORCH_HOME/hub/checkpoints`` (where torchvision itself saves them)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [Path(weights_dir), hub] if weights_dir is not None else [hub]


def find_pretrained_file(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The local ImageNet weights file of ``name``; FileNotFoundError naming the expected file,
    the folder to place it in and where to get it. Nothing is downloaded."""
    spec = model_spec(name)
    files = spec.pretrained_files
    if files is None:
        raise ValueError(f"'{name}' has no pretrained files to look for; use pretrained=False")
    folders = pretrained_folders(weights_dir)
    for folder in folders:
        for file_name in files.names:
            if (folder / file_name).is_file():
                return folder / file_name
    cached = _hf_cached_file(files.hf_hub_id)
    if cached is not None:
        return cached
    searched = ", ".join(map(str, folders))
    if files.hf_hub_id:
        searched += f" or the Hugging Face cache of {files.hf_hub_id}"
    raise FileNotFoundError(PRETRAINED_FILE_MISSING.format(
        name=name, files=" / ".join(files.names), folders=searched, source=files.source,
        target=folders[0] / files.names[0]))


def _hf_cached_file(hub_id: str | None) -> Path | None:
    """A weights file already in the local Hugging Face cache (HF_HOME); never downloads."""
    if not hub_id:
        return None
    for file_name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, file_name)
        if isinstance(found, str):
            return Path(found)
    return None


def load_weights(model: nn.Module, state_dict: dict, name: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` (architecture ``name``) in place.

    Tensors of the classifier head whose shape differs (another class count) or that the file
    lacks keep the model's fresh initialisation, with a log line; any other mismatch raises
    ValueError naming the first few mismatched keys.
    """
    spec = model_spec(name)
    if spec.adapt_weights is not None:
        state_dict = spec.adapt_weights(state_dict, model)
    own = model.state_dict()
    mismatched = [key for key, value in state_dict.items()
                  if key in own and tuple(value.shape) != tuple(own[key].shape)]
    outside_head = [key for key in mismatched if not _in_head(key, spec.head)]
    if outside_head:
        shapes = "; ".join(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                           for k in outside_head[:5])
        raise ValueError(WEIGHTS_SHAPES_DIFFER.format(name=name, shapes=shapes))
    # files saved before torch 0.4.1 lack the batch-norm counters; they start at 0 as torch does
    counters = [key for key in own if key not in state_dict
                and key.endswith(".num_batches_tracked")]
    missing = [key for key in own if key not in state_dict and key not in counters]
    unexpected = [key for key in state_dict if key not in own]
    if [key for key in missing if not _in_head(key, spec.head)] or unexpected:
        details = "; ".join(f"{what} {len(keys)} keys, e.g. {', '.join(keys[:5])}"
                            for what, keys in (("the file lacks", missing),
                                               ("the model has no", unexpected)) if keys)
        raise ValueError(WEIGHTS_KEYS_DIFFER.format(name=name, details=details))
    fresh = mismatched + missing
    if fresh:
        logger.info("'%s': re-initialised %s for %d classes (shape differs in the weights file)",
                    name, ", ".join(fresh), own[fresh[0]].shape[0])
    model.load_state_dict({**state_dict, **{key: own[key] for key in fresh + counters}},
                          strict=True)
    return model


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict in ``path``: a bare state dict, a ``save_checkpoint`` file (or any dict
    holding it under ``state_dict`` / ``model``) or a ``.safetensors`` file. Only tensors and
    plain values are unpickled (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(WEIGHTS_FILE_MISSING.format(path=path))
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path, device="cpu")
    loaded = _torch_load(path, "cpu")
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            return loaded[key]
    return loaded


def _torch_load(path: Path, map_location):
    """``torch.load`` of tensors and plain values only, with a clear error for other files."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ValueError(UNSAFE_WEIGHTS_FILE.format(
                path=path, detail=f"e.g. {found.group(1)}")) from None
        raise ValueError(NOT_A_WEIGHTS_FILE.format(path=path, error=err)) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(NOT_A_WEIGHTS_FILE.format(path=path, error=err)) from None


# ---- architectures --------------------------------------------------------------------------
# Their pretrained weights come from local files (``pretrained_files``); the builders themselves
# never download.

def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(arch, num_classes=num_classes)


@register_model("resnet50", head="fc", pretrained_files=_torchvision_files("resnet50"))
def resnet50(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision ResNet-50 (23.5M parameters for 2 classes)."""
    return _torchvision_model("resnet50", num_classes)


@register_model("mobilenet_v2", head="classifier.1",
                pretrained_files=_torchvision_files("mobilenet_v2"))
def mobilenet_v2(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision MobileNetV2 (2.2M parameters for 2 classes)."""
    return _torchvision_model("mobilenet_v2", num_classes)


@register_model("efficientnet_b0", head="classifier.1",
                pretrained_files=_torchvision_files("efficientnet_b0"))
def efficientnet_b0(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision EfficientNet-B0 (4.0M parameters for 2 classes)."""
    return _torchvision_model("efficientnet_b0", num_classes)


# Three stride-2 stages shrink the map so that below 17 px the last pooling gets an empty input.
@register_model("squeezenet1_1", head="classifier.1", min_image_size=17,
                pretrained_files=_torchvision_files("squeezenet1_1"))
def squeezenet1_1(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """torchvision SqueezeNet 1.1 (0.7M parameters for 2 classes) without the ReLU on its logits.

    Upstream clamps the final conv's outputs at 0; trained from scratch on small images (a 1x1
    final map) most samples start with every logit at 0, no gradient flows and the model stays
    at the majority class. The ReLU has no weights, so pretrained weights load unchanged.
    """
    model = _torchvision_model("squeezenet1_1", num_classes)
    model.classifier[2] = nn.Identity()
    return model


def vit_patch_size(image_size: int) -> int:
    """Patch size giving a 4x4 token grid on small images, capped at the standard 16 px."""
    patch = min(16, max(1, image_size // 4))
    if image_size % patch:
        raise ValueError(f"ViT needs image_size divisible by its patch size {patch}, got "
                         f"{image_size}; use e.g. 16, 32, 48, 64 or 224")
    return patch


_VIT_SMALL = timm.models.get_pretrained_cfg("vit_small_patch16_224")


@register_model("vit_small", head="head", adapt_weights=checkpoint_filter_fn,
                pretrained_files=PretrainedFiles(
                    ("vit_small_patch16_224.safetensors", "vit_small_patch16_224.pth"),
                    f"https://huggingface.co/{_VIT_SMALL.hf_hub_id}", _VIT_SMALL.hf_hub_id))
def vit_small(num_classes: int, image_size: int, pretrained: bool) -> nn.Module:
    """timm ViT-Small (embed 384, depth 12, 6 heads) with patches from ``vit_patch_size``;
    ImageNet weights load through ``checkpoint_filter_fn``, which resamples the 16 px patch
    and position embeddings to this size."""
    return timm.create_model("vit_small_patch16_224", num_classes=num_classes,
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
    checkpoint = {"state_dict": state_dict, "meta": plain_meta}
    return atomic_write(path, lambda temp: torch.save(checkpoint, temp))


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
