"""Per-slice forward time of the reference's real-size networks on a GPU (bf16 autocast, channels-last).

The classifiers of exp2 (ViT-L/14 and EVA-L/14 at 384²), exp3's mit_b4 FPN at 384², and the detectors
of exp0 (yolo11x at 1280²) and exp1 (yolov5n at 640² on one mean image), with random weights (the time
does not depend on them), fp32 beside bf16 for ViT-L. Prints ms per slice and seconds per 200-slice
series per fold model. Needs a CUDA GPU; tests never run it.
Usage: python benchmarks/gpu_models.py [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

SLICES = 200  # a typical series


def classifiers():
    import segmentation_models_pytorch as smp
    import timm

    yield "exp2 ViT-L/14 (vit_large_patch14_clip_336) 384²", lambda: timm.create_model(
        "vit_large_patch14_clip_336", pretrained=False, num_classes=14, img_size=384), (3, 384, 384), 64
    yield "exp2 EVA-L/14 (eva_large_patch14_336) 384²", lambda: timm.create_model(
        "eva_large_patch14_336", pretrained=False, num_classes=14, img_size=384), (3, 384, 384), 64
    yield "exp3 FPN mit_b4 (cls + 2-ch seg) 384²", lambda: smp.FPN(
        "mit_b4", encoder_weights=None, in_channels=3, classes=2, aux_params={"classes": 14}), (3, 384, 384), 64


def detectors():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    yield "exp0 yolo11x 1280² (aneurysm)", lambda: DetectionModel("yolo11x.yaml", nc=2, verbose=False), (3, 1280, 1280), 16
    yield "exp1 yolov5n 640² (brain, one mean image)", lambda: DetectionModel("yolov5n.yaml", nc=2, verbose=False), \
        (3, 640, 640), 1


def ms_per_image(model, shape, batch: int, steps: int, dtype) -> float:
    model = model.cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, *shape, device="cuda").to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__}), mean of {args.steps} "
          "timed batches after 3 warm-ups")
    print(f"{'network':<46}{'dtype':>6}{'batch':>6}{'ms/image':>10}{f's per {SLICES}-slice series':>26}")
    rows = [(name, build, shape, batch, torch.bfloat16) for name, build, shape, batch in [*classifiers(), *detectors()]]
    rows.insert(1, (rows[0][0], rows[0][1], rows[0][2], rows[0][3], torch.float32))
    for name, build, shape, batch, dtype in rows:
        ms = ms_per_image(build(), shape, batch, args.steps, dtype)
        per_series = ms if "mean image" in name else ms * SLICES
        print(f"{name:<46}{str(dtype).split('.')[-1]:>6}{batch:>6}{ms:>10.3f}{per_series / 1000:>26.3f}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
