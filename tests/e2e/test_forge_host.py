"""The extension in a real Stable Diffusion WebUI Forge, over its HTTP API (opt-in: set FORGE_HOST to
a Forge folder with its environment and this extension in its extensions/; README, "Forge").
The CI layer, the same glue through ComfyUI's ModelPatcher, is tests/host/test_forge_glue.py."""
import numpy
import pytest

from testbed import forge_api, host, models

FOLDER = forge_api.forge_folder()
pytestmark = pytest.mark.skipif(
    FOLDER is None, reason="FORGE_HOST names no Forge folder: the test against a real Forge is opt-in "
                           "(README, Forge); tests/host/test_forge_glue.py covers the glue in CI")

ALL_FULL = [True, "forecast", "balanced", 1.0, -1, 0.0, 1.0, ""]  # budget 1: every step computed
STEPS = 20


def args(method="auto", preset="balanced"):
    return [True, method, preset, 0.0, -1, 0.0, 1.0, ""]


@pytest.fixture(scope="module")
def pack():
    return host.load_pack()  # ComfyUI's classes write the checkpoint; the pack's settings read the pictures


@pytest.fixture(scope="module")
def forge(pack, tmp_path_factory):
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    models.save_sd15_checkpoint(checkpoints / "duca-sd15-small.safetensors")
    server = forge_api.Forge.start(FOLDER, checkpoints, checkpoints / "forge.log")
    try:
        if "accelerate (duca)" not in server.get("/sdapi/v1/scripts")["txt2img"]:
            pytest.fail(f"the extension is not installed in {FOLDER / 'extensions'} (Extensions tab, "
                        "Install from URL, or a clone of this repository there)")
        yield server
    finally:
        server.stop()


def compute_of(infotext: str) -> list:
    """The compute fractions of the passes, from the picture's parameters."""
    part = infotext.split("DuCa compute: ")[1].split('"')[1] if 'DuCa compute: "' in infotext \
        else infotext.split("DuCa compute: ")[1].split(",")[0]
    return [float(x.strip().rstrip("%")) / 100 for x in part.split(",")]


def test_the_all_full_plan_is_bit_identical_to_stock_forge(forge):
    stock, stock_info, _, _ = forge.txt2img(steps=STEPS)
    full, full_info, _, _ = forge.txt2img(ALL_FULL, steps=STEPS)
    assert "DuCa" not in stock_info and "DuCa method: forecast" in full_info
    assert numpy.array_equal(stock, full)
    assert compute_of(full_info) == [1.0]


@pytest.mark.parametrize("method, preset, at_most", [
    ("auto", "quality", 0.8), ("auto", "balanced", 0.8), ("auto", "fast", 0.8), ("auto", "turbo", 0.8),
    ("fora", "balanced", 1.0)])  # FORA skips a U-Net's transformer layers only; its ResBlocks run
def test_each_preset_saves_compute(forge, method, preset, at_most):
    stock, _, _, _ = forge.txt2img(steps=STEPS)
    out, info, _, _ = forge.txt2img(args(method, preset), steps=STEPS)
    (computed,) = compute_of(info)
    assert computed < at_most and out.shape == stock.shape
    assert not numpy.array_equal(out, stock)  # the steps it skipped were forecast, not computed


def test_settings_come_back_from_the_picture(pack, forge):
    from comfyui_duca.forge import ForgeSettings
    settings = ForgeSettings(method="forecast", preset="fast", budget=0.3, first_full_steps=2, start=0.1, end=0.9)
    _, info, _, png = forge.txt2img([True, settings.method, settings.preset, settings.budget, settings.first_full_steps,
                                     settings.start, settings.end, settings.schedule_file], steps=STEPS)
    parameters = forge.png_info(png)["parameters"]
    assert ForgeSettings.from_infotext(parameters) == settings


def test_img2img_plans_the_steps_its_strength_leaves(forge):
    _, _, _, init = forge.txt2img(steps=STEPS)
    stock, _, _, _ = forge.img2img(init, steps=STEPS, denoising_strength=0.5)
    full, full_info, _, _ = forge.img2img(init, ALL_FULL, steps=STEPS, denoising_strength=0.5)
    assert numpy.array_equal(stock, full) and compute_of(full_info) == [1.0]
    out, info, _, _ = forge.img2img(init, args("auto", "fast"), steps=STEPS, denoising_strength=0.5)
    (computed,) = compute_of(info)
    assert computed < 0.8 and not numpy.array_equal(out, stock)


def test_hires_fix_and_batches_get_a_plan_per_pass(forge):
    out, info, _, _ = forge.txt2img(args("auto", "fast"), steps=STEPS, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                                    hr_second_pass_steps=10, denoising_strength=0.5, batch_size=2, n_iter=2,
                                    hr_additional_modules=["Use same choices"])  # the API leaves it None otherwise
    assert out.shape == (128, 128, 3)
    first, second = compute_of(info)  # the first pass and the hires pass, each its own run
    assert first < 0.8 and second < 1.0
