"""Load Cache Schedule on files that are not schedules: one ValueError naming schedule_name and
saying what is wrong, never the reading library's own error; a good saved schedule still loads."""
import json
import re
import struct
import uuid
from pathlib import Path

import pytest
import torch

from testbed import host

UNITS = ("double_block.0", "double_block.1", "single_block.0")


@pytest.fixture(scope="module")
def core(pack):
    from comfyui_duca.cache_core import schedule, schedule_rules
    return schedule, schedule_rules


@pytest.fixture
def folder(pack):
    """Writes files among the saved schedules (the host's output folder) under unique names, and
    removes them afterwards."""
    import folder_paths
    from comfyui_duca.glue import schedule_files
    where = Path(folder_paths.get_output_directory()) / schedule_files.FOLDER
    where.mkdir(parents=True, exist_ok=True)
    written = []

    def write(suffix: str, data: bytes = b"", size: int | None = None) -> str:
        path = where / f"corrupt_{uuid.uuid4().hex[:12]}{suffix}"
        written.append(path)
        with open(path, "wb") as f:
            f.write(data)
            if size is not None:
                f.truncate(size)  # sparse: the size without the disk
        return path.name
    write.folder = where
    yield write
    for path in written:
        path.unlink(missing_ok=True)


def metadata(core, **changes) -> dict:
    _, rules = core
    return {**rules.fora(4, UNITS, "flux", interval=2).metadata(), **changes}


def schedule_json(core, table, **changes) -> bytes:
    return json.dumps({**metadata(core, **changes), "table": table}).encode()


def safetensors_bytes(tensors: dict, meta: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors, metadata={key: json.dumps(value) for key, value in meta.items()})


def good_table() -> torch.Tensor:
    return torch.zeros(4, len(UNITS), dtype=torch.uint8)


def refused(name: str, reason: str) -> ValueError:
    """The node's error on `name`: a plain ValueError that starts with the input's name and gives
    the reason, the library's error neither raised nor chained."""
    with pytest.raises(ValueError, match="^" + re.escape(f"schedule_name: {name!r} ") + reason) as caught:
        host.node("DuCaLoadSchedule").execute(schedule_name=name)
    assert caught.type is ValueError
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return caught.value


def test_bytes_that_are_no_safetensors_file_are_refused_naming_the_input(folder):
    refused(folder(".safetensors", b"hello, this is no tensor file at all"),
            r"is not a safetensors file \(header too large\)$")
    refused(folder(".safetensors", struct.pack("<Q", 2**40) + b"{}"),  # a header length of 2^40 bytes
            r"is not a safetensors file \(header too large\)$")
    refused(folder(".safetensors", b"abc"), r"is not a safetensors file \(header too small\)$")


def test_empty_files_are_refused_as_empty(folder):
    refused(folder(".safetensors"), "is empty$")
    refused(folder(".json"), "is empty$")


def test_a_truncated_safetensors_schedule_is_refused(core, folder):
    whole = safetensors_bytes({"table": good_table()}, metadata(core))
    refused(folder(".safetensors", whole[:-3]), r"is not a safetensors file \(incomplete metadata")
    refused(folder(".safetensors", whole[:20]), r"is not a safetensors file \(invalid header length\)$")


def test_json_that_cannot_be_read_is_refused(folder):
    refused(folder(".json", b"[" * 100_000), r"is not valid JSON \(nested too deeply to read\)$")
    refused(folder(".json", bytes(range(255, -1, -1)) * 4), "is not UTF-8 text$")
    refused(folder(".json", b'{"format": "duca-schedule",'), r"is not valid JSON \(Expecting")


def test_json_that_is_not_a_schedule_is_refused(core, folder):
    refused(folder(".json", b"[1, 2, 3]"), "is not a cache schedule: the JSON is a list, not an object$")
    refused(folder(".json", json.dumps(metadata(core)).encode()), "is not a cache schedule: missing 'table'$")
    refused(folder(".json", b'{"table": [[0]]}'), r"is not a cache schedule \(no 'duca-schedule' format marker\)$")
    refused(folder(".json", schedule_json(core, [[0, 0], [0, 0]])),
            re.escape("is not a valid cache schedule: schedule table must be [steps, 3 units], got (2, 2)") + "$")
    refused(folder(".json", schedule_json(core, [[0, 0, 0], [0, 0]])),
            "is not a cache schedule: 'table' is not a list of rows of cells$")
    refused(folder(".json", schedule_json(core, [[0.5, 0, 0]])),
            "is not a cache schedule: 'table' holds torch.float32, not integer cells$")
    refused(folder(".json", schedule_json(core, [[7, 0, 0]])), "is not a valid cache schedule: schedule table "
            r"holds values other than 0 \(compute\)")
    refused(folder(".json", schedule_json(core, [[0, 0, 0]], units="double_block.0")),
            "is not a cache schedule: 'units' is a str, not a list$")
    refused(folder(".json", schedule_json(core, [[0, 0, 0]], version=2)),
            "is a schedule of format version 2; this pack reads version 1$")


def test_safetensors_that_are_not_a_schedule_are_refused(core, folder):
    refused(folder(".safetensors", safetensors_bytes({"weights": good_table()}, metadata(core))),
            "is not a cache schedule: missing 'table'$")
    refused(folder(".safetensors", safetensors_bytes({"table": good_table().float()}, metadata(core))),
            "is not a cache schedule: 'table' holds torch.float32, not integer cells$")
    refused(folder(".safetensors", safetensors_bytes({"table": good_table()[:, :2].contiguous()}, metadata(core))),
            re.escape("is not a valid cache schedule: schedule table must be [steps, 3 units], got (4, 2)") + "$")
    refused(folder(".safetensors", safetensors_bytes({"table": good_table()}, metadata(core, notes=[1, 2]))),
            "is not a cache schedule: 'notes' holds other things than names$")
    # another tool's file: plain-string metadata, no format marker
    from safetensors.torch import save
    model_file = save({"table": good_table()}, metadata={"format": "pt"})
    refused(folder(".safetensors", model_file), r"is not a cache schedule \(no 'duca-schedule' format marker\)$")


def test_a_file_larger_than_any_schedule_is_refused_before_it_is_read(core, folder, monkeypatch):
    schedule, _ = core
    limit = schedule.MAX_FILE_BYTES
    assert limit == 64 * 2**20
    opened = []  # the JSON reader's opens: none, the size alone refuses the file
    monkeypatch.setattr(schedule, "open", lambda *a, **k: opened.append(a) or open(*a, **k), raising=False)
    start = safetensors_bytes({"table": good_table()}, metadata(core))   # a good schedule's start, then zeros
    for suffix, data in ((".safetensors", start), (".json", schedule_json(core, good_table().tolist()))):
        refused(folder(suffix, data, size=limit + 1), f"is {limit + 1} bytes, more than any schedule "
                f"\\({limit} at most\\)$")
    assert opened == []


def test_a_good_saved_schedule_still_loads(core, folder):
    _, rules = core
    made = rules.eb_cache(6, UNITS, "flux", attention_interval=3, mlp_interval=2, first_full_steps=1)
    for fmt in ("safetensors", "json"):
        ui = host.node("DuCaSaveSchedule").execute(made, f"corrupt_{uuid.uuid4().hex[:12]}", fmt).ui
        name = ui["schedules"][0]["filename"]
        try:
            loaded, picture = host.node("DuCaLoadSchedule").execute(schedule_name=name).result
        finally:
            (folder.folder / name).unlink()
        assert torch.equal(loaded.table, made.table) and picture.shape[0] == 1
        assert (loaded.units, loaded.family, loaded.method, loaded.settings) == \
            (made.units, made.family, made.method, made.settings)
