import logging

import numpy as np
import pytest
import timm.models._builder
import torch
import torchvision
from torch import nn
from torch.fx import symbolic_trace

import models

REAL_ARCHS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small"]


def _size_for(name):
    return 16 if name.startswith("tiny") else 32


def _batch(image_size, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, image_size, image_size,
                       generator=generator), torch.tensor([0, 1] * (n // 2))


def test_registry_holds_the_study_and_test_architectures():
    assert set(REAL_ARCHS + ["tiny_cnn", "tiny_vit"]) <= set(models.list_models())


@pytest.mark.parametrize("name", models.list_models())
def test_every_architecture_builds_trains_a_step_and_traces(name):
    torch.manual_seed(0)
    size = _size_for(name)
    model = models.build_model(name, num_classes=2, image_size=size)
    images, targets = _batch(size)
    head_before = {k: v.clone() for k, v in model.state_dict().items()
                   if k.startswith(models.model_spec(name).head)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in head_before.items())

    model.eval()
    with torch.no_grad():
        logits = model(images)
        traced = symbolic_trace(model)(images)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(traced, logits)


def test_vit_small_has_vit_small_dimensions_and_16_tokens_at_32px():
    model = models.build_model("vit_small", num_classes=3, image_size=32)
    assert model.embed_dim == 384 and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == 6
    assert model.patch_embed.patch_size == (8, 8) and model.patch_embed.num_patches == 16
    assert model.head.out_features == 3


@pytest.mark.parametrize("image_size, patch", [(16, 4), (32, 8), (48, 12), (64, 16), (224, 16)])
def test_vit_patch_size_gives_small_grids_and_standard_patches_at_224(image_size, patch):
    assert models.vit_patch_size(image_size) == patch


def test_squeezenet_logits_can_be_negative_so_training_from_scratch_gets_gradients():
    torch.manual_seed(0)
    model = models.build_model("squeezenet1_1", image_size=32).eval()
    with torch.no_grad():
        logits = model(_batch(32, n=8)[0])
    assert (logits < 0).any()


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*mobilenet_v2.*tiny_cnn"):
        models.build_model("resnet51")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="tiny_cnn", num_classes=1), "num_classes must be an int >= 2, got 1"),
    (dict(name="squeezenet1_1", image_size=16), "'squeezenet1_1' must be an int >= 17, got 16"),
    (dict(name="tiny_vit", image_size=30), "divisible by its patch size 7, got 30"),
    (dict(name="tiny_cnn", pretrained=True), "'tiny_cnn' has no pretrained weights"),
    (dict(name="tiny_cnn", pretrained=True, weights_path="w.pt"), "not both"),
])
def test_bad_build_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(**kwargs)


def test_register_model_adds_an_architecture_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @models.register_model("linear_probe")
    def linear_probe(num_classes, image_size, pretrained):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size ** 2, num_classes))

    assert models.build_model("linear_probe", num_classes=5, image_size=8)(
        torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="'linear_probe' is already registered"):
        models.register_model("linear_probe")(linear_probe)


def test_a_head_mismatch_is_refused_when_no_head_is_registered(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models.register_model("linear_probe")(
        lambda num_classes, image_size, pretrained: nn.Linear(4, num_classes))
    torch.save(nn.Linear(4, 5).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"weight: file \(5, 4\) vs model \(3, 4\)"):
        models.build_model("linear_probe", num_classes=3, weights_path=tmp_path / "w.pt")


def _no_download(*args, **kwargs):
    raise AssertionError("build_model must never download")


def test_pretrained_torchvision_offline_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(FileNotFoundError) as caught:
        models.build_model("squeezenet1_1", pretrained=True, weights_dir=tmp_path / "weights")
    message = str(caught.value)
    assert "Nothing is downloaded" in message and "weights_path=" in message
    assert f"save it as {tmp_path / 'weights' / 'squeezenet1_1-b8a52dc0.pth'}" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in message


def test_pretrained_vit_offline_names_the_file_and_the_hub_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", _no_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(models, "_hf_cached_file", lambda hub_id: None)
    with pytest.raises(FileNotFoundError,
                       match="vit_small_patch16_224.safetensors.*augreg.*weights_path="):
        models.build_model("vit_small", pretrained=True)


def test_pretrained_loads_cached_torchvision_weights_and_resets_the_head(monkeypatch, tmp_path):
    torch.manual_seed(1)
    imagenet = models.build_model("squeezenet1_1", num_classes=1000)
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet.state_dict(), tmp_path / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    model = models.build_model("squeezenet1_1", num_classes=2, pretrained=True)
    torch.testing.assert_close(model.features[0].weight, imagenet.features[0].weight)
    assert model.classifier[1].out_channels == 2


def test_weights_path_reinitialises_a_mismatched_head_with_a_log_line(tmp_path, caplog):
    torch.manual_seed(0)
    source = models.build_model("tiny_cnn", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    with caplog.at_level(logging.INFO, logger="models"):
        model = models.build_model("tiny_cnn", num_classes=2, weights_path=tmp_path / "w.pt")
    torch.testing.assert_close(model.features[0].weight, source.features[0].weight)
    assert model.classifier.out_features == 2
    assert "re-initialised classifier.weight, classifier.bias for 2 classes" in caplog.text


def test_weights_path_resamples_vit_position_embeddings_for_another_image_size(tmp_path):
    torch.save(models.build_model("tiny_vit", image_size=32).state_dict(), tmp_path / "w.pt")
    model = models.build_model("tiny_vit", image_size=16, weights_path=tmp_path / "w.pt")
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(models.build_model("tiny_cnn").state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="weights do not fit 'squeezenet1_1'"):
        models.build_model("squeezenet1_1", weights_path=tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        models.build_model("tiny_cnn", weights_path=tmp_path / "missing.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="notes.txt is not a readable torch file"):
        models.build_model("tiny_cnn", weights_path=tmp_path / "notes.txt")


def test_count_parameters_and_fp32_size():
    layer = nn.Linear(10, 3)
    assert models.count_parameters(layer) == 33
    assert models.fp32_size_mib(layer) == 33 * 4 / 2**20
    # conv 3*8*9 + 8*16*9 + 16*16*9, batch norms 2*(8+16+16), linear 16*2+2
    assert models.count_parameters(models.build_model("tiny_cnn")) == 3672 + 80 + 34


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("tiny_vit", num_classes=2, image_size=16).eval()
    path = tmp_path / "ckpt" / "tiny_vit.pt"
    models.save_checkpoint(model, path, arch="tiny_vit", num_classes=2, image_size=16,
                           metrics={"accuracy": np.float64(0.75)}, epochs=np.int64(3))

    state_dict, meta = models.load_checkpoint(path)
    assert meta == {"arch": "tiny_vit", "num_classes": 2, "image_size": 16,
                    "metrics": {"accuracy": 0.75}, "epochs": 3}
    assert state_dict.keys() == model.state_dict().keys()
    assert [p.name for p in path.parent.iterdir()] == ["tiny_vit.pt"]  # no temp file left

    rebuilt, _ = models.load_model_from_checkpoint(path)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt.eval()(images), model(images))


def test_checkpoint_errors(tmp_path):
    model = models.build_model("tiny_cnn")
    with pytest.raises(ValueError, match="not a plain"):
        models.save_checkpoint(model, tmp_path / "a.pt", arch=object())
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="nothere.pt does not exist"):
        models.load_checkpoint(tmp_path / "nothere.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by save_checkpoint"):
        models.load_checkpoint(tmp_path / "bare.pt")
    models.save_checkpoint(model, tmp_path / "no_meta.pt", metrics={})
    with pytest.raises(ValueError, match=r"lacks meta \['arch', 'num_classes', 'image_size'\]"):
        models.load_model_from_checkpoint(tmp_path / "no_meta.pt")


# ---- names beyond the registry: timm:, torchvision:, module:function ----------------------------

RESOLVED_FOR_TESTS = ["timm:test_resnet", "timm:test_efficientnet", "timm:test_vit",
                      "torchvision:mobilenet_v3_small"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", RESOLVED_FOR_TESTS)
def test_recommended_resolved_names_build_train_a_step_and_trace(name):
    test_every_architecture_builds_trains_a_step_and_traces(name)


@pytest.mark.parametrize("name, head", [
    ("timm:test_resnet", "fc"),
    ("timm:test_efficientnet", "classifier"),
    ("timm:resnet18.a1_in1k", "fc"),
    ("torchvision:resnet18", "fc"),
    ("torchvision:squeezenet1_1", "classifier.1"),
    ("torchvision:mobilenet_v3_small", "classifier.3"),
    ("torchvision:vit_b_16", "heads.head"),
    ("torchvision:googlenet", ("aux1.fc2", "aux2.fc2", "fc")),
])
def test_prefixed_names_resolve_to_a_spec_with_the_classifier_head(name, head):
    spec = models.model_spec(name)
    assert spec.head == head
    assert models.model_spec(name) is spec  # resolved once


@pytest.mark.parametrize("name, head_layer", [
    ("timm:test_resnet", "fc"), ("torchvision:mobilenet_v3_small", "classifier.3")])
def test_resolved_models_get_a_head_of_num_classes(name, head_layer):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=3, image_size=32).eval()
    assert model.get_submodule(head_layer).out_features == 3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _write_module(folder, module, source):
    (folder / f"{module}.py").write_text(source)


USER_MODULE = '''
from torch import nn

def build(num_classes, image_size, pretrained):
    """Ignores num_classes: the framework resizes the last Linear."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000))

def build_exact(num_classes, image_size, pretrained):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size ** 2, num_classes))

def build_nothing(num_classes, image_size, pretrained):
    return "not a model"

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    _write_module(tmp_path, "bnq_user_models", USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(models, "_RESOLVED", {})
    return "bnq_user_models"


def test_a_user_builder_resolves_and_its_last_linear_is_resized(user_module):
    spec = models.model_spec(f"{user_module}:build")
    assert spec.head == "5" and spec.pretrained_files is None  # pretrained is passed to build
    model = models.build_model(f"{user_module}:build", num_classes=3, image_size=16)
    assert model[5].out_features == 3 and model[3].out_features == 8
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    exact = models.build_model(f"{user_module}:build_exact", num_classes=4, image_size=8)
    assert exact(torch.zeros(1, 3, 8, 8)).shape == (1, 4)


def test_a_user_builder_is_found_from_the_current_folder(tmp_path, monkeypatch):
    _write_module(tmp_path, "bnq_cwd_models", USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models.sys, "path", [p for p in models.sys.path if p not in ("", ".")])
    monkeypatch.setattr(models, "_RESOLVED", {})
    models.check_model_name("bnq_cwd_models:build")
    assert str(tmp_path) in models.sys.path


@pytest.mark.parametrize("name, message", [
    ("bnq_nosuch_module:build", r"cannot import module 'bnq_nosuch_module'.*"
                                r"put bnq_nosuch_module.py in the folder you run from"),
    ("bnq_user_models:nosuch", r"has no callable 'nosuch' \(found nothing\); define def nosuch"),
    ("bnq_user_models:NOT_CALLABLE", r"has no callable 'NOT_CALLABLE' \(found int\)"),
])
def test_bad_user_builders_are_named(user_module, name, message):
    with pytest.raises(ValueError, match=message):
        models.check_model_name(name)


def test_a_user_builder_must_return_a_module(user_module):
    with pytest.raises(TypeError, match="returned str, expected a torch.nn.Module"):
        models.build_model(f"{user_module}:build_nothing")


@pytest.mark.parametrize("name, message", [
    ("resnet51", r"unknown model 'resnet51' \(did you mean resnet50\?\); known models: .*tiny_cnn"
                 r".*'timm:<name>'.*'torchvision:<name>'.*'<module>:<function>'"),
    ("timm:nosuch_net", r"'nosuch_net' is not a timm model.*timm.list_models"),
    ("timm:resnet1", r"not a timm model \(did you mean resnet18"),
    ("timm:resnet18.nosuch_tag", r"'resnet18.nosuch_tag' is not a timm model"),
    ("torchvision:resnet", r"not a torchvision classification model \(did you mean resnet"),
    ("torchvision:fasterrcnn_resnet50_fpn", r"not a torchvision classification model"),
    ("a:b:c", r"model name 'a:b:c' is malformed"),
    ("timm:hf-hub:timm/resnet18", r"malformed"),
    ("my-models:build", r"malformed"),
    (3, r"model name 3 is malformed"),
    (["resnet50"], r"model name \[.resnet50.\] is malformed"),
])
def test_bad_names_say_what_is_known_and_how_to_list_more(name, message):
    with pytest.raises(ValueError, match=message):
        models.check_model_name(name)
    with pytest.raises(ValueError, match=message):
        models.build_model(name)


def test_check_model_name_builds_nothing(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("check_model_name must not build the model")

    monkeypatch.setattr(models, "_RESOLVED", {})
    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(torchvision.models, "get_model", no_build)
    for name in ("tiny_cnn", "timm:test_resnet", "timm:resnet18.a1_in1k", "torchvision:resnet18"):
        assert models.check_model_name(name) is None


@pytest.mark.parametrize("name, slug", [
    ("resnet50", "resnet50"), ("tiny_cnn", "tiny_cnn"), ("timm:resnet18", "timm-resnet18"),
    ("timm:resnet18.a1_in1k", "timm-resnet18.a1_in1k"),
    ("torchvision:mobilenet_v3_small", "torchvision-mobilenet_v3_small"),
    ("mypkg.models:build", "mypkg.models-build"),
])
def test_arch_slug_is_path_safe_readable_and_reversible(name, slug):
    assert models.arch_slug(name) == slug
    assert not set(slug) & set(':/\\ ')
    assert (slug if ":" not in name else slug.replace("-", ":")) == name


def test_arch_slug_refuses_malformed_names_and_registered_names_cannot_collide(monkeypatch):
    with pytest.raises(ValueError, match="malformed"):
        models.arch_slug("timm:../../etc")
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    for bad in ("timm-resnet18", "my:model", "a/b"):
        with pytest.raises(ValueError, match=f"cannot register model '{bad}'"):
            models.register_model(bad)


# ---- weights for resolved names ------------------------------------------------------------------

def _same_predictions(first, second, size=32):
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(first.eval()(images), second.eval()(images))


@pytest.mark.parametrize("as_checkpoint", [False, True])
def test_weights_path_round_trip_of_a_timm_model(tmp_path, as_checkpoint):
    torch.manual_seed(0)
    trained = models.build_model("timm:test_resnet", num_classes=2)
    path = tmp_path / "w.pt"
    if as_checkpoint:
        models.save_checkpoint(trained, path, arch="timm:test_resnet", num_classes=2, image_size=32)
        rebuilt, meta = models.load_model_from_checkpoint(path)
        assert meta["arch"] == "timm:test_resnet"
        _same_predictions(rebuilt, trained)
    else:
        torch.save(trained.state_dict(), path)
    torch.manual_seed(1)
    loaded = models.build_model("timm:test_resnet", num_classes=2, weights_path=path)
    _same_predictions(loaded, trained)


def test_weights_path_reinitialises_a_resolved_head_for_another_class_count(tmp_path, caplog):
    torch.manual_seed(0)
    source = models.build_model("torchvision:mobilenet_v3_small", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    with caplog.at_level(logging.INFO, logger="models"):
        model = models.build_model("torchvision:mobilenet_v3_small", num_classes=2,
                                   weights_path=tmp_path / "w.pt")
    torch.testing.assert_close(model.features[0][0].weight, source.features[0][0].weight)
    torch.testing.assert_close(model.classifier[0].weight, source.classifier[0].weight)
    assert model.classifier[3].out_features == 2
    assert "re-initialised classifier.3.weight, classifier.3.bias for 2 classes" in caplog.text


def test_weights_with_other_keys_name_them(tmp_path):
    state = models.build_model("tiny_cnn").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["features.0.weight"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"the file lacks 1 keys, e.g. features.0.weight; "
                                         r"the model has no 1 keys, e.g. extra.weight"):
        models.build_model("tiny_cnn", weights_path=tmp_path / "w.pt")


class NotATensor:
    pass


def test_a_weights_file_with_python_objects_is_refused(tmp_path):
    state = models.build_model("tiny_cnn").state_dict()
    torch.save({"state_dict": state, "extra": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match=r"pickled.pt holds Python objects besides tensors "
                                         r"\(e.g. .*NotATensor\).*torch.save\(model.state_dict"):
        models.build_model("tiny_cnn", weights_path=tmp_path / "pickled.pt")


def test_pretrained_torchvision_name_loads_the_standard_file_from_weights_dir(monkeypatch,
                                                                              tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    torch.manual_seed(1)
    imagenet = models.build_model("torchvision:squeezenet1_1", num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "squeezenet1_1-b8a52dc0.pth")

    model = models.build_model("torchvision:squeezenet1_1", num_classes=2, pretrained=True,
                               weights_dir=tmp_path)
    torch.testing.assert_close(model.features[0].weight, imagenet.features[0].weight)
    assert model.classifier[1].out_channels == 2


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_pretrained_timm_name_loads_its_file_from_weights_dir(monkeypatch, tmp_path, suffix):
    import safetensors.torch

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(models, "_hf_cached_file", lambda hub_id: None)
    torch.manual_seed(1)
    imagenet = models.build_model("timm:test_resnet", num_classes=1000)
    path = tmp_path / f"test_resnet.{suffix}"
    if suffix == "safetensors":
        safetensors.torch.save_file(imagenet.state_dict(), path)
    else:
        torch.save(imagenet.state_dict(), path)

    model = models.build_model("timm:test_resnet", num_classes=1000, pretrained=True,
                               weights_dir=tmp_path)
    _same_predictions(model, imagenet)
    two_class = models.build_model("timm:test_resnet", pretrained=True, weights_dir=tmp_path)
    torch.testing.assert_close(two_class.conv1[0].weight, imagenet.conv1[0].weight)
    assert two_class.fc.out_features == 2


def test_pretrained_timm_file_missing_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(models, "_hf_cached_file", lambda hub_id: None)
    with pytest.raises(FileNotFoundError) as caught:
        models.build_model("timm:test_resnet", pretrained=True, weights_dir=tmp_path / "w")
    message = str(caught.value)
    assert "none of test_resnet.safetensors / test_resnet.pth" in message
    assert f"save it as {tmp_path / 'w' / 'test_resnet.safetensors'}" in message
    assert "huggingface.co/timm/test_resnet.r160_in1k" in message


def test_a_timm_vit_is_sized_for_the_image_with_a_fixed_position_table():
    model = models.build_model("timm:test_vit", image_size=32)
    assert model.patch_embed.img_size == (32, 32) and model.pos_embed.shape[1] == 1 + 4
    assert model.dynamic_img_size is False  # test_vit asks for it; FX cannot trace it


def test_a_torchvision_vit_is_sized_for_the_image_and_resamples_224px_weights():
    torch.manual_seed(0)
    name = "torchvision:vit_b_32"
    assert models.model_spec(name).pretrained_files.names == ("vit_b_32-d86f8d99.pth",)
    imagenet = models.build_model(name, num_classes=1000, image_size=224)
    model = models.build_model(name, image_size=64)
    models.load_weights(model, imagenet.state_dict(), name)  # what pretrained=True does
    assert model.encoder.pos_embedding.shape == (1, 1 + 4, 768)
    torch.testing.assert_close(model.conv_proj.weight, imagenet.conv_proj.weight)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_weights_without_batch_norm_counters_load_as_old_torchvision_files_do(tmp_path):
    torch.manual_seed(0)
    source = models.build_model("tiny_cnn")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    _same_predictions(models.build_model("tiny_cnn", weights_path=tmp_path / "old.pth"), source)


def test_a_model_without_its_classifier_layer_is_named(monkeypatch):
    monkeypatch.setattr(models, "_RESOLVED", {})
    spec = models.model_spec("timm:test_resnet")
    monkeypatch.setitem(models._RESOLVED, "timm:test_resnet",
                        models.ModelSpec(models._with_head(
                            lambda n, s, p: nn.Sequential(nn.Flatten()), "fc", "timm:test_resnet"),
                            spec.head))
    with pytest.raises(ValueError, match="classifier layer 'fc' is not in the built model"):
        models.build_model("timm:test_resnet")
