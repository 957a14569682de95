"""Training throughput: the seed-style reference DCGAN against gan-augment's trainer, same device, same process.

Reference: pytorch/examples ``dcgan/main.py`` as written - torchvision's FashionMNIST with per-item transforms,
a DataLoader with worker processes, the example's nn.Sequential G and D (Sigmoid + BCELoss) and its loop with
``.item()`` on every step. Ours: the production path of ``worker.train`` - dataset decoded once into a tensor on
the device, batches by index, our G and D, the spec's defaults (or ``--fast``: bf16 and torch.compile options).
Both at the same image size, batch size and width. Prints images/s of each; the last line is ``ratio=<ours/ref>``.

    python benchmarks/train_throughput.py [--image-size 64] [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.datasets as dset
import torchvision.transforms as transforms
from torch.utils.flop_counter import FlopCounterMode

from shared.datasets import FASHION_MNIST_SYSTEM_DIR
from shared.settings import Settings
from shared.specs import PRECISIONS, TrainSpec
from worker.data import load_dataset
from worker.gan_step import resolve_precision, step_functions, train_step
from worker.train import BatchSchedule, gan_config, job_recipe, memory_format, new_state, pick_device, real_batch


# ---- the reference: pytorch/examples dcgan, with the image size as a parameter of its Sequential stacks ----
class RefGenerator(nn.Module):
    def __init__(self, nz: int, ngf: int, nc: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        mult = size // 8  # 64 -> 8 (the example's ngf * 8), 32 -> 4
        layers += [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        while mult > 1:
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class RefDiscriminator(nn.Module):
    def __init__(self, ndf: int, nc: int, size: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        while mult < size // 8:
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


def torchvision_root() -> Path:
    """torchvision's FashionMNIST wants the un-gzipped files under <root>/FashionMNIST/raw/."""
    root = Path(tempfile.mkdtemp(prefix="fmnist-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in Path(FASHION_MNIST_SYSTEM_DIR).glob("*-ubyte.gz"):
        with gzip.open(source) as packed, open(raw / source.name[:-3], "wb") as plain:
            shutil.copyfileobj(packed, plain)
    return root


def reference_images_per_s(size: int, batch: int, width: int, steps: int, warmup: int, workers: int) -> float:
    device = pick_device()
    root = torchvision_root()
    dataset = dset.FashionMNIST(root=str(root), download=False, transform=transforms.Compose([
        transforms.Resize(size), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,)),
    ]))
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                             drop_last=True)
    netG = RefGenerator(100, width, 1, size).to(device)
    netG.apply(weights_init)
    netD = RefDiscriminator(width, 1, size).to(device)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optimizerD = optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    done, started = 0, 0.0
    while True:
        for data in dataloader:
            if done == warmup:
                started = time.perf_counter()
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            real_cpu = data[0].to(device)
            batch_size = real_cpu.size(0)
            label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()
            noise = torch.randn(batch_size, 100, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()
            # (2) Update G network: maximize log(D(G(z)))
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            optimizerG.step()
            _ = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)  # the example prints these every step
            done += 1
            if done == warmup + steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                shutil.rmtree(root, ignore_errors=True)
                return steps * batch / (time.perf_counter() - started)


def ours_images_per_s(size: int, batch: int, width: int, steps: int, warmup: int, extra: dict) -> tuple[float, float, str]:
    """Our trainer's images/s, the floating-point operations of one of its steps (torch's FLOP counter: the
    convolutions and matrix products, forward and backward, which are nearly all of a step's work) and the
    precision it ran in."""
    device = pick_device()
    spec = TrainSpec(job_id="bench", dataset="fashion-mnist", image_size=size, batch_size=batch, width=width,
                     conditional=False, steps=steps + warmup, **extra)
    data = load_dataset(spec.dataset, Settings.from_env(), "train", image_size=size)
    images = data.images.to(device)
    config = gan_config(spec, data)
    state = new_state(spec, config, device)
    fns = step_functions(spec, job_recipe(spec, data), state, device)
    layout = memory_format(config, device)
    schedule = BatchSchedule(len(images), batch, spec.seed, device)
    stats = torch.zeros(4, device=device)
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        train_step(state, fns, real_batch(images, schedule.indices(step), layout), None, stats)
        state.step += 1
    stats.tolist()  # one sync at the end, as the trainer does once per log window
    images_per_s = steps * batch / (time.perf_counter() - started)
    with FlopCounterMode(display=False) as counter:
        train_step(state, fns, real_batch(images, schedule.indices(0), layout), None, stats)
    return images_per_s, float(counter.get_total_flops()), resolve_precision(spec, device)


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    """What this device's matrix product reaches in DTYPE: the practical peak a convolution in that precision
    could approach (a bf16 step measured against the fp32 product would flatter it: AMX's bf16 product is ~5x)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * 2 * size**3 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="the reference DataLoader's workers (the example's default)")
    parser.add_argument("--ours", default="defaults", choices=["defaults", "seed-recipe"],
                        help="our trainer with the spec defaults, or with the seed's recipe (BCE, no SN/aug/EMA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our networks")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # both sides: the trainer sets it, so the reference gets it too
    extra: dict = {"compile": args.compile, "precision": args.precision}
    if args.ours == "seed-recipe":
        extra.update(loss="bce", spectral_norm=False, conditioning="concat", diffaugment="none", ema=0.0)
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; image {args.image_size}, batch {args.batch_size}, "
          f"width {args.width}, {args.steps} timed steps after {args.warmup} warm-up")
    reference = reference_images_per_s(args.image_size, args.batch_size, args.width, args.steps, args.warmup,
                                       args.workers)
    print(f"reference (pytorch/examples dcgan, DataLoader x{args.workers} workers): {reference:.1f} images/s")
    ours, step_flops, precision = ours_images_per_s(args.image_size, args.batch_size, args.width, args.steps,
                                                    args.warmup, extra)
    print(f"ours ({args.ours}, compile={args.compile}, precision={args.precision}: {precision}): {ours:.1f} images/s")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    achieved, peak = step_flops * ours / args.batch_size, matmul_flops_per_s(device, dtype)
    print(f"ours: {step_flops / 1e9:.1f} GFLOP per step, {achieved / 1e9:.1f} GFLOP/s; this device's {precision} "
          f"matrix product (4096^2): {peak / 1e9:.1f} GFLOP/s; ours reaches {100 * achieved / peak:.0f} % of it")
    print(f"ratio={ours / reference:.3f}")


if __name__ == "__main__":
    main()
