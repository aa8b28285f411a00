"""Schedules as data: saving, loading, resampling, mismatches, and the papers' rules."""
import pytest
import torch

from comfyui_duca.cache_core.profile import ChangeProfile
from comfyui_duca.cache_core.schedule import MAX_FILE_BYTES, Cell, Schedule, ScheduleFileError, ScheduleMismatch
from comfyui_duca.cache_core import schedule_rules as rules
from comfyui_duca.cache_core.plan import Action

UNITS = ("double_block.0", "double_block.1", "single_block.0")


def test_save_and_load_round_trip_both_formats(tmp_path):
    schedule = rules.eb_cache(12, UNITS, "flux", attention_interval=3, mlp_interval=2, first_full_steps=2)
    for name in ("s.json", "s.safetensors"):
        schedule.save(tmp_path / name)
        loaded = Schedule.load(tmp_path / name)
        assert torch.equal(loaded.table, schedule.table)
        assert (loaded.units, loaded.family, loaded.method, loaded.settings) == \
            (schedule.units, schedule.family, schedule.method, schedule.settings)


def test_a_file_that_is_not_a_schedule_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"table": [[0]]}')
    with pytest.raises(ValueError, match="not a cache schedule"):
        Schedule.load(path)


@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000, "is not valid JSON (nested too deeply to read)"),
    ('{"format": ', "is not valid JSON (Expecting value: line 1 column 12 (char 11))"),
    ("[0]", "is not a cache schedule: the JSON is a list, not an object"),
    ('{"format": "duca-schedule", "version": "1", "family": "flux", "method": "fora", "units": ["a"]}',
     "is not a cache schedule: missing 'table'"),
    ('{"format": "duca-schedule", "version": "1", "family": "flux", "method": "fora", "units": ["a"], '
     '"table": [[0, 0]]}', "is not a valid cache schedule: schedule table must be [steps, 1 units], got (1, 2)"),
    ('{"format": "duca-schedule", "version": "1", "family": "flux", "method": "fora", "units": ["a"], '
     '"table": [[true]]}', "is not a cache schedule: 'table' holds torch.bool, not integer cells"),
    ('{"format": "duca-schedule", "version": "1", "family": "flux", "method": 3, "units": ["a"], "table": [[0]]}',
     "is not a cache schedule: 'method' is a int, not a str"),
])
def test_json_that_is_not_a_schedule_says_why(text, reason):
    with pytest.raises(ScheduleFileError) as caught:
        Schedule.from_json(text)
    assert caught.value.reason == reason and str(caught.value) == f"schedule file {reason}"


def test_files_that_cannot_be_schedules_are_refused_saying_why(tmp_path):
    def reason(name, data=b"", size=None):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.write(data)
            if size is not None:
                f.truncate(size)  # sparse
        with pytest.raises(ScheduleFileError) as caught:
            Schedule.load(path)
        return caught.value.reason
    assert reason("e.safetensors") == reason("e.json") == "is empty"
    assert reason("big.json", size=MAX_FILE_BYTES + 1) == \
        f"is {MAX_FILE_BYTES + 1} bytes, more than any schedule ({MAX_FILE_BYTES} at most)"
    assert reason("bin.json", b"\xff\xfe\x00") == "is not UTF-8 text"
    assert reason("text.safetensors", b"not tensors at all") == "is not a safetensors file (header too large)"
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "folder.json" / "inside").write_text("x")  # a folder of some size on every file system
    with pytest.raises(ScheduleFileError, match="cannot be read"):
        Schedule.load(tmp_path / "folder.json")


def test_resampling_keeps_first_and_last_rows_and_says_so():
    schedule = rules.fora(28, UNITS, "flux", interval=3)
    shorter = schedule.resampled(10)
    assert shorter.num_steps == 10
    assert torch.equal(shorter.table[0], schedule.table[0]) and torch.equal(shorter.table[-1], schedule.table[-1])
    assert shorter.notes == ("resampled from 28 to 10 steps",)
    assert schedule.resampled(28) is schedule
    # each unit keeps its density of computation
    assert rules.fora(12, UNITS, "flux", interval=2).resampled(6).as_plan().timeline == "FPFPFP"
    longer = rules.fora(20, UNITS, "flux", interval=3).resampled(28)
    assert abs(longer.compute_fraction() - 7 / 20) < 0.03


def test_mismatched_family_or_block_count_is_a_clear_error():
    schedule = rules.fora(8, UNITS, "flux")
    with pytest.raises(ScheduleMismatch, match="made for a flux model"):
        schedule.check_fits("wan", UNITS)
    with pytest.raises(ScheduleMismatch, match="covers 3 blocks"):
        schedule.check_fits("flux", UNITS[:2])
    schedule.check_fits("flux", UNITS)


def test_table_values_are_checked():
    with pytest.raises(ValueError, match="other than 0"):
        Schedule(torch.full((2, 3), 7), UNITS, "flux", "custom")
    with pytest.raises(ValueError, match="units"):
        Schedule(torch.zeros(2, 2), UNITS, "flux", "custom")


def test_fora_computes_every_nth_step():
    schedule = rules.fora(7, UNITS, "flux", interval=3, first_full_steps=1)
    assert [schedule.computes_step(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert schedule.compute_fraction() == pytest.approx(3 / 7)
    assert schedule.as_plan().timeline == "FPPFPPF"
    assert schedule.as_plan(whole_steps=True).timeline == "FAAFAAF"


def test_eb_cache_intervals_and_table():
    schedule = rules.eb_cache(9, UNITS, "flux", attention_interval=4, mlp_interval=2, first_full_steps=1)
    assert [schedule.cell(i, 0) for i in range(9)] == [Cell.COMPUTE, Cell.REUSE, Cell.REUSE_ATTENTION, Cell.REUSE,
                                                       Cell.COMPUTE, Cell.REUSE, Cell.REUSE_ATTENTION, Cell.REUSE,
                                                       Cell.COMPUTE]
    table = rules.eb_cache(4, UNITS, "flux", table="0,1,2,0")
    assert table.table[:, 1].tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="mlp_interval"):
        rules.eb_cache(9, UNITS, "flux", attention_interval=2, mlp_interval=3)
    with pytest.raises(ValueError, match="digits"):
        rules.eb_cache(3, UNITS, "flux", table="01x")
    with pytest.raises(ValueError, match="entries"):
        rules.eb_cache(5, UNITS, "flux", table="012")


def test_block_caching_recomputes_when_accumulated_change_passes_threshold():
    change = torch.tensor([[0.0, 0.0], [0.2, 0.6], [0.2, 0.6], [0.2, 0.6], [0.2, 0.6]])
    schedule = rules.block_caching(change, ("a", "b"), "flux", threshold=0.5)
    # unit a: 0.2, 0.4, 0.6 > 0.5 -> computed at step 3; unit b passes at every step
    assert schedule.table[:, 0].tolist() == [0, 2, 2, 0, 2]
    assert schedule.table[:, 1].tolist() == [0, 0, 0, 0, 0]


def test_router_threshold_and_matching_a_compute_fraction():
    gates = torch.tensor([[1.0, 1.0], [0.9, 0.2], [0.4, 0.6], [1.0, 1.0]])
    schedule = rules.router(gates, [1, 2], ("a", "b"), "flux", threshold=0.5)
    assert schedule.table.tolist() == [[0, 0], [0, 2], [2, 0], [0, 0]]
    threshold = rules.threshold_for_fraction(gates, [1, 2], 5 / 8)
    assert rules.router(gates, [1, 2], ("a", "b"), "flux", threshold).compute_fraction() == pytest.approx(5 / 8)
    tied = torch.tensor([[1.0, 1.0], [0.5, 0.5], [0.5, 0.5], [1.0, 1.0]])
    threshold = rules.threshold_for_fraction(tied, [1, 2], 5 / 8)
    assert rules.router(tied, [1, 2], ("a", "b"), "flux", threshold).compute_fraction() == 1.0


def test_step_rehash_key_steps_by_similarity():
    similarity = torch.ones(5, 5)
    similarity[3, 0] = 0.5  # step 3 drifts from key step 0
    schedule = rules.step_rehash(similarity, UNITS, "flux", threshold=0.9, keep_first=1)
    assert [schedule.computes_step(i) for i in range(5)] == [True, False, False, True, False]
    assert schedule.table[1].tolist() == [0, 2, 2]


def test_plan_of_a_schedule_marks_partial_steps():
    schedule = rules.eb_cache(6, UNITS, "flux", 3, 1, first_full_steps=1)
    plan = schedule.as_plan()
    assert [s.action for s in plan.steps][:3] == [Action.FULL, Action.PARTIAL, Action.PARTIAL]


def test_picture_and_text_show_every_cell():
    schedule = rules.eb_cache(5, UNITS, "flux", 2, 1, first_full_steps=1)
    picture = schedule.picture(cell_pixels=4)
    assert picture.shape == (3 * 4, 5 * 4, 3)
    assert not torch.equal(picture[1, 1], picture[1, 5])  # a computed and an attention-reused cell differ
    assert str(schedule).splitlines()[1].endswith("#a#a#")


def test_change_profile_measures_relative_change_and_similarity():
    profile = ChangeProfile(num_steps=3, num_units=2, probe_unit=1)
    base = torch.ones(1, 4)
    for step, scale in enumerate((1.0, 1.5, 1.5)):
        profile.observe("key", 0, step, base * scale)
        profile.observe("key", 1, step, {"img": base * scale, "txt": -base})
    change = profile.relative_change()
    assert change[1, 0] == pytest.approx(0.5) and change[2, 0] == pytest.approx(0.0)
    similarity = profile.similarity()
    assert similarity[2, 1] == pytest.approx(1.0) and similarity.shape == (3, 3)


def test_a_schedule_within_a_step_window_computes_every_unit_outside_it():
    from comfyui_duca.cache_core.plan import StepWindow
    schedule = rules.fora(12, UNITS, "flux", interval=3, first_full_steps=1)
    assert schedule.within(StepWindow()) is schedule  # a window that covers the run changes nothing
    windowed = schedule.within(StepWindow(first_full_steps=4, start=0.0, end=0.5))
    for step in range(12):
        inside = 4 <= step < 6
        assert torch.equal(windowed.table[step], schedule.table[step] if inside
                           else torch.full((len(UNITS),), int(Cell.COMPUTE), dtype=torch.uint8)), step
    assert not windowed.computes_everything and "outside the step window" in windowed.notes[-1]
