import logging
import urllib.error

import numpy as np
import pytest
import timm.models._builder
import torch
from torch import nn
from torch.fx import symbolic_trace

import models

REAL_ARCHS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small"]


def _size_for(name):
    return 16 if name.startswith("tiny") else 32


def _batch(image_size, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, image_size, image_size, generator=generator), torch.tensor([0, 1] * (n // 2))


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


def test_pretrained_torchvision_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError) as caught:
        models.build_model("squeezenet1_1", pretrained=True)
    message = str(caught.value)
    assert "URLError" in message and "weights_path=" in message
    assert str(tmp_path / "checkpoints" / "squeezenet1_1-b8a52dc0.pth") in message


def test_pretrained_vit_offline_names_the_hub_weights(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(FileNotFoundError, match="vit_small_patch16_224.*weights_path="):
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
