"""The small trained models behave like trained models: their samples are pictures, per class."""
import torch

from testbed import models, pixel_latents

STEPS = 16


def pictures(model, label, seed, side, channels):
    return models.class_picture(model, label, seed, side, channels, STEPS)


def neighbour_correlation(picture):
    """Correlation of horizontally adjacent pixels: about 0 for noise, high for photographs."""
    a, b = picture[..., :, :-1].flatten(), picture[..., :, 1:].flatten()
    return float(torch.corrcoef(torch.stack((a, b)))[0, 1])


def test_trained_flux_samples_distinct_pictures(pack):
    model, side, channels = models.flux_trained(), models.FLUX_TRAINED_PIXELS, 16
    astronaut, rocket = models.CLASSES.index("astronaut"), models.CLASSES.index("rocket")
    a0 = pictures(model, astronaut, 0, side, channels)
    a1 = pictures(model, astronaut, 1, side, channels)
    r0 = pictures(model, rocket, 0, side, channels)
    assert a0.shape == (3, side, side)
    for picture in (a0, a1, r0):
        assert neighbour_correlation(picture) > 0.5          # structure, not noise
        assert 0.05 < float(picture.std()) < 0.9             # neither flat nor saturated
    seed_gap = float((a0 - a1).abs().mean())
    class_gap = float((a0 - r0).abs().mean())
    assert seed_gap > 0.01                                    # seeds give different pictures
    assert class_gap > seed_gap                               # the class matters more than the seed


def test_trained_sd_unet_samples_distinct_pictures(pack):
    model, side, channels = models.sd_unet_trained(), models.SD_TRAINED_PIXELS, pixel_latents.SD_CHANNELS
    astronaut, rocket = models.CLASSES.index("astronaut"), models.CLASSES.index("rocket")
    a0, a1 = pictures(model, astronaut, 0, side, channels), pictures(model, astronaut, 1, side, channels)
    r0, r1 = pictures(model, rocket, 0, side, channels), pictures(model, rocket, 1, side, channels)
    assert a0.shape == (3, side, side)
    for picture in (a0, a1, r0, r1):
        # 32x32 grey crops of these photographs: neighbour correlation 0.75-0.87; the samples of
        # the earlier, globally scaled codec: -0.11-0.44 (a 2x2 texture); noise: 0
        assert neighbour_correlation(picture) > 0.45
        assert 0.05 < float(picture.std()) < 0.9
    seed_gap = (float((a0 - a1).abs().mean()) + float((r0 - r1).abs().mean())) / 2
    class_gap = (float((a0 - r0).abs().mean()) + float((a1 - r1).abs().mean())) / 2
    assert seed_gap > 0.01                                    # seeds give different pictures
    assert class_gap > seed_gap                               # the class matters more than the seed


def test_trained_sd_unet_samples_are_nearest_their_own_class(pack):
    """Each class's samples resemble that class's photograph: a sample's nearest training crop
    (mean absolute difference) comes from its own class far more often than chance (1 in 6)."""
    from training.train_small_models import load_photographs, random_crops
    model, side = models.sd_unet_trained(), models.SD_TRAINED_PIXELS
    photos, gen = load_photographs(side), torch.Generator().manual_seed(0)
    crops = [random_crops(photos, torch.full((200,), label), side, gen).mean(1)
             for label in range(len(models.CLASSES))]
    hits = 0
    for label in range(len(models.CLASSES)):
        for seed in (0, 1):
            grey = pictures(model, label, seed, side, pixel_latents.SD_CHANNELS).mean(0)
            distances = [float((c - grey).abs().mean(dim=(1, 2)).min()) for c in crops]
            hits += distances.index(min(distances)) == label
    assert hits >= 10, f"{hits} of 12 samples nearest their own class"


def test_the_flagship_forecasts_the_u_nets_deep_feature_closer_than_it_reuses_it(pack):
    """The registry's measured estimator for U-Nets (taylor2, `auto` on the node) against reusing
    the deep feature, at the same steps computed, on the trained U-Net: closer to the uncached
    pictures on every case tried."""
    from comfyui_duca.glue.patch import apply_method, last_stats
    from comfyui_duca.methods import PRESETS
    model, side, channels = models.sd_unet_trained(), models.SD_TRAINED_PIXELS, pixel_latents.SD_CHANNELS
    balanced = PRESETS["balanced"].with_changes(preset="balanced")
    auto, reuse = apply_method(model, balanced), apply_method(model, balanced.with_changes(estimator="reuse"))
    for label, seed in ((models.CLASSES.index("astronaut"), 0), (models.CLASSES.index("rocket"), 1)):
        uncached = pictures(model, label, seed, side, channels)
        errors = {}
        for name, patched in (("auto", auto), ("reuse", reuse)):
            errors[name] = float(((pictures(patched, label, seed, side, channels) - uncached) ** 2).mean())
        assert last_stats(auto).timeline == last_stats(reuse).timeline and "A" in last_stats(auto).timeline
        assert errors["auto"] < 0.7 * errors["reuse"], (label, errors)
