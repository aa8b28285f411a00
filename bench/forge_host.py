"""The extension in a real Stable Diffusion WebUI Forge: per preset, the compute its passes ran (from
the pictures' parameters) and the wall-clock speedup of a txt2img request against stock Forge, side
by side in one server, medians of --repeats; and whether the all-full plan is bit-identical.

    FORGE_HOST=~/stable-diffusion-webui-forge python3 tools/host.py python bench/forge_host.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import forge_api, host, models  # noqa: E402

CASES = {"auto quality": ("auto", "quality"), "auto balanced": ("auto", "balanced"), "auto fast": ("auto", "fast"),
         "turbo (forecast)": ("auto", "turbo"), "forecast balanced": ("forecast", "balanced"),
         "fora balanced": ("fora", "balanced")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    folder = forge_api.forge_folder()
    if folder is None:
        p.error("set FORGE_HOST to a Forge folder (with its environment and this extension installed)")
    host.load_pack()
    import numpy
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Path(tmp)
        models.save_sd15_checkpoint(checkpoints / "duca-sd15-small.safetensors")
        forge = forge_api.Forge.start(folder, checkpoints, checkpoints / "forge.log")
        try:
            print(f"Forge at {folder}, SD1.5-layout U-Net with random weights, {args.steps} steps, Euler / Simple")
            for size in args.sizes:
                kw = dict(steps=args.steps, width=size, height=size)
                forge.txt2img(**kw)  # warm-up
                stock_runs = [forge.txt2img(**kw) for _ in range(args.repeats)]
                stock = statistics.median(r[2] for r in stock_runs)
                full = forge.txt2img([True, "forecast", "balanced", 1.0, -1, 0.0, 1.0, ""], **kw)
                same = numpy.array_equal(full[0], stock_runs[0][0])
                print(f"{size}x{size}: stock {stock:.2f} s; all-full plan bit-identical to stock: {same}")
                for name, (method, preset) in CASES.items():
                    runs = [forge.txt2img([True, method, preset, 0.0, -1, 0.0, 1.0, ""], **kw) for _ in range(args.repeats)]
                    seconds = statistics.median(r[2] for r in runs)
                    computed = runs[0][1].split("DuCa compute: ")[1].split(",")[0]
                    print(f"  {name}: compute {computed}, {seconds:.2f} s, {stock / seconds:.2f}x")
        finally:
            forge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
