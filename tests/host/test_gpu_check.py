"""bench/gpu_check.py at its tiny size on the CPU: the code the CUDA check runs, kept working."""
import json
import math

from bench.frontier import BUDGET_PRESETS


def test_tiny_check_measures_every_preset_and_the_slicer(pack, tmp_path, capsys):
    from bench import gpu_check
    out = tmp_path / "check.json"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out

    for model in ("flux_dev", "wan_14b"):
        rows = {r["preset"]: r for r in report["presets"] if r["model"] == model}
        assert list(rows) == list(BUDGET_PRESETS), model
        fractions = [rows[p]["compute_fraction"] for p in BUDGET_PRESETS]
        assert 1 > fractions[0] > fractions[1] > fractions[2] > fractions[3] > 0, (model, fractions)
        for preset, row in rows.items():
            assert math.isfinite(row["speedup"]) and row["speedup"] > 0, (model, preset)
            assert row["met"] == (row["speedup"] >= 0.9 / row["compute_fraction"])
            assert row["cache_bytes"] > 0, (model, preset)
            assert f"| {model} | {preset} | {row['compute_fraction']:.3f} |" in printed

    assert report["slicer"]
    for row in report["slicer"]:
        assert 0 < row["sliced_peak_bytes"] < row["unsliced_peak_bytes"], row
    assert "Feature Slicer" in printed and report["device"] in printed
