"""Peak extra memory of the UNet fp32 remedy: a whole fp32 copy vs one block at a time.

The remedy for a UNet NaN that upcast attention did not fix runs the fp16 UNet in fp32.  A whole
fp32 copy (``module_forward_precision``) holds 4 bytes per parameter next to the 2 of the fp16
originals; ``blockwise_forward_precision`` holds one block's copy at a time.

* Measured: an SSD-1B-structured UNet at reduced width (the stand-in sgm on the CPU), one forward
  under each remedy; at every block's forward the bytes of the fp32 weights held are summed.
* Full size (not runnable here): the same per-block sums from the SSD-1B layout's tensor shapes.

    python benchmarks/bench_unet_remedy.py [--width 64]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fakewebui"))

from sgm.modules.diffusionmodules import openaimodel  # noqa: E402

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY  # noqa: E402
from extensions_ssd1b.arch.layout import UNetLayout, unet_tensor_shapes  # noqa: E402
from extensions_ssd1b.arch.unet_builder import build_unet  # noqa: E402
from extensions_ssd1b.core.settings import Precision  # noqa: E402
from extensions_ssd1b.tools.samples import reduced_layout  # noqa: E402
from extensions_ssd1b.vae.nan import blockwise_forward_precision, module_forward_precision, sequential_blocks  # noqa: E402

FAMILY = "ssd-1b"
FP32 = 4  # bytes per element


def block_of(name: str) -> str:
    """``input_blocks.4.1.proj.weight`` → ``input_blocks.4``: the pieces the UNet runs one after another."""
    head, rest = name.split(".", 1)
    return f"{head}.{rest.split('.', 1)[0]}" if head in ("input_blocks", "output_blocks") else head


def fp32_bytes_by_block(layout: UNetLayout) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    for name, shape in unet_tensor_shapes(layout).items():
        sizes[block_of(name)] += FP32 * int(torch.Size(shape).numel())
    return dict(sizes)


Remedy = Callable[[torch.nn.Module, Precision], contextlib.AbstractContextManager[object]]


def measured_peak(layout: UNetLayout, remedy: Remedy) -> int:
    """The most bytes of fp32 weights held while any block of the fp16 UNet runs under ``remedy``."""
    unet = build_unet(openaimodel, layout).to_empty(device="cpu")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0.0, 0.02)
    unet = unet.half().eval()
    held: list[int] = []

    def count(*_: object) -> None:
        held.append(sum(FP32 * t.numel() for t in unet.parameters() if t.dtype == torch.float32))

    x = torch.randn(1, layout.in_channels, 16, 16, dtype=torch.float16)
    context = torch.randn(1, 8, layout.context_dim, dtype=torch.float16)
    y = torch.randn(1, layout.adm_in_channels, dtype=torch.float16)
    with torch.no_grad(), remedy(unet, Precision.FP32), contextlib.ExitStack() as hooks:
        for block in sequential_blocks(unet):  # registered after the remedy's own hooks: they see the cast
            hooks.callback(block.register_forward_pre_hook(count).remove)
        out = unet(x, timesteps=torch.tensor([500]), context=context, y=y)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    return max(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64, help="model_channels of the measured, reduced UNet")
    width = parser.parse_args().width
    mib = 1024**2
    print(f"UNet fp32 remedy, peak extra weight bytes ({FAMILY}; the fp16 originals are not counted)\n")
    print("| UNet | params | whole fp32 copy | one block at a time | largest block |")
    print("|---|---:|---:|---:|---|")
    small = reduced_layout(FAMILY, model_channels=width)
    by_block = fp32_bytes_by_block(small)
    whole, blockwise = measured_peak(small, module_forward_precision), measured_peak(small, blockwise_forward_precision)
    largest = max(by_block, key=by_block.__getitem__)
    assert whole == sum(by_block.values()) and blockwise == by_block[largest], "measurement and layout disagree"
    params = sum(by_block.values()) // FP32
    print(f"| measured, width {width} | {params / 1e6:.1f} M | {whole / mib:.1f} MiB", end="")
    print(f" | {blockwise / mib:.1f} MiB", end="")
    print(f" | {largest} |")
    full = fp32_bytes_by_block(FAMILIES_BY_KEY[FAMILY].layout)
    largest = max(full, key=full.__getitem__)
    total = sum(full.values())
    print(
        f"| full size (layout) | {total / FP32 / 1e9:.2f} B | {total / mib:,.0f} MiB | "
        f"{full[largest] / mib:,.0f} MiB | {largest} |"
    )
    print(f"\nfull size: the blockwise remedy needs {full[largest] / total:.1%} of the whole copy's extra bytes;")
    print(f"fp16 weights {total / 2 / mib:,.0f} MiB + whole copy {total / mib:,.0f} MiB", end="")
    print(f" vs + one block {full[largest] / mib:,.0f} MiB")


if __name__ == "__main__":
    main()
