"""The README's family table says what the family registry says: one row per family (and one for
the models no entry names), its name, level, preset settings and the first ComfyUI it runs on."""
import re
from pathlib import Path

from comfyui_duca.adapters.registry import DEEPCACHE, FAMILIES, GENERIC
from comfyui_duca.methods import PRESETS, DeepCacheConfig
from comfyui_duca.methods.duca import PRESET_NAMES

README = Path(__file__).resolve().parents[2] / "README.md"


def family_rows() -> dict:
    """family name -> (level, settings cell, ComfyUI version) from the table whose header starts with
    | family | models |."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| family | models | level |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = (cells[2], cells[3], cells[4])
    return rows


def triples(cell: str) -> list:
    return [(int(i), float(r), int(f)) for i, r, f in re.findall(r"(\d+)/([\d.]+)/(\d+)", cell)]


def test_every_family_has_one_row_with_its_level():
    rows = family_rows()
    assert sorted(rows) == sorted(f.name for f in (*FAMILIES, GENERIC))
    for family in (*FAMILIES, GENERIC):
        assert rows[family.name][0] == family.level, family.name
        assert rows[family.name][2] == family.since, family.name


def test_the_preset_settings_shown_are_the_registrys():
    rows = family_rows()
    for family in (*FAMILIES, GENERIC):
        cell = rows[family.name][1]
        if family.estimator != "reuse":  # a forecast the presets use is said
            assert f"({family.estimator})" in cell, family.name
        if family.level == DEEPCACHE:
            shown = [int(n) for n in re.search(r"interval (\d+); (\d+); (\d+)", cell).groups()]
            assert shown == [DeepCacheConfig.from_duca(PRESETS[p]).interval for p in PRESET_NAMES], family.name
        elif family.defaults:
            expected = [tuple(family.defaults[p][k] for k in ("interval", "refresh_ratio", "first_full_steps"))
                        for p in PRESET_NAMES]
            assert triples(cell) == expected, family.name
        else:
            assert "papers'" in cell, family.name
