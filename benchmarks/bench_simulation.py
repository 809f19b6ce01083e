"""Simulated (fake-quantized) models and QAT steps: this framework's forms against torch's own.

    python -m benchmarks.bench_simulation                       # the five study models
    python -m benchmarks.bench_simulation --archs vit_small --rounds 5

For each architecture (random weights, 32 px, batch 64, min/max calibration on two batches):

- ``simulated``: forward seconds of the reference model as ``quantization`` builds it (activation
  quantize/dequantize pairs fused into ``fake_quantize``, fake-quantized weights reused) against
  torch's decomposed reference model, at w4a8 and w8a4; and whether the logits are bit-identical.
- ``qat``: seconds per training step with ``StraightThroughFakeQuantize`` against torch's
  ``FakeQuantize``, and whether the weights after the timed steps are bit-identical.

The two forms run interleaved, round by round, so a burst of other load hits both; ratios < 1
mean this framework's form is faster. Prints the load average: quote numbers from a quiet machine.
"""
from __future__ import annotations

import cpu_policy  # noqa: F401  (first: passive OpenMP waiting, as main.py runs)

import argparse
import os
import time

import torch
from torch.ao.quantization import FakeQuantize, disable_observer
from torch.ao.quantization.quantize_fx import _convert_to_reference_decomposed_fx

import qconfigs
import quantization
from models import build_model

STUDY_ARCHS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "vit_small", "squeezenet1_1"]


def _batches(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(64, 3, 32, 32, generator=generator) for _ in range(n)]


def _torch_reference(model, calibration, bits: str):
    prepared = quantization.prepare_quantization(
        model, quantization.PTQStaticConfig(bits=bits, observer="minmax"), calibration[0])
    quantization.calibrate(prepared, calibration)
    prepared.apply(disable_observer)
    return _convert_to_reference_decomposed_fx(prepared).eval()


def simulated(arch: str, bits: str, rounds: int) -> str:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, image_size=32).eval()
    calibration, images = _batches(2), _batches(rounds)
    ours = quantization.apply_quantization(model, "ptq_static", bits=bits, observer="minmax",
                                           calibration_data=calibration)
    theirs = _torch_reference(model, calibration, bits)
    seconds, identical = {"ours": 0.0, "torch": 0.0}, True
    with torch.inference_mode():
        ours(images[0]), theirs(images[0])  # warm-up
        for batch in images:
            outputs = {}
            for name, form in (("ours", ours), ("torch", theirs)):
                start = time.perf_counter()
                outputs[name] = form(batch)
                seconds[name] += time.perf_counter() - start
            identical &= torch.equal(outputs["ours"], outputs["torch"])
    return (f"{arch:16s} simulated {bits}  ours {seconds['ours'] / rounds:7.3f} s/batch  torch "
            f"{seconds['torch'] / rounds:7.3f}  ratio {seconds['ours'] / seconds['torch']:.2f}  "
            f"bit-identical {identical}")


def _qat_models(arch: str):
    images = _batches(1)[0]
    forms = {}
    for name in ("ours", "torch"):
        torch.manual_seed(0)
        prepared = quantization.prepare_quantization(
            build_model(arch, num_classes=2, image_size=32), quantization.QATConfig(bits="w8a8"),
            images[:2], qat=True)
        if name == "torch":
            for module in prepared.modules():
                if isinstance(module, qconfigs.StraightThroughFakeQuantize):
                    module.forward = FakeQuantize.forward.__get__(module)
        forms[name] = (prepared, torch.optim.AdamW(prepared.parameters(), lr=1e-3))
    return forms


def qat(arch: str, rounds: int) -> str:
    forms, seconds = _qat_models(arch), {"ours": 0.0, "torch": 0.0}
    images, labels = _batches(1)[0], torch.arange(64) % 2
    for step in range(rounds + 1):  # step 0 warms up, untimed
        for name, (model, optimizer) in forms.items():
            torch.manual_seed(step)  # the same dropout masks for both forms
            start = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            seconds[name] += (time.perf_counter() - start) if step else 0.0
    ours, theirs = (forms[name][0].state_dict() for name in ("ours", "torch"))
    identical = all(torch.equal(ours[key], theirs[key]) for key in ours)
    return (f"{arch:16s} qat step w8a8   ours {seconds['ours'] / rounds:7.3f} s/step   torch "
            f"{seconds['torch'] / rounds:7.3f}  ratio {seconds['ours'] / seconds['torch']:.2f}  "
            f"bit-identical {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=STUDY_ARCHS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    for arch in args.archs:
        for bits in ("w4a8", "w8a4"):
            print(simulated(arch, bits, args.rounds), flush=True)
        print(qat(arch, args.rounds), flush=True)


if __name__ == "__main__":
    main()
