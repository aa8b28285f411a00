"""Where schedules are saved and found: `models/duca_schedules/` (shared schedules a user
drops in) and `output/duca_schedules/` (what Save Cache Schedule writes)."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..cache_core.schedule import Schedule, ScheduleFileError

FOLDER = "duca_schedules"
FORMATS = {"safetensors": ".safetensors", "json": ".json"}


def _register() -> None:
    """Our folders in the host's list, checked on each call: the node list is built as the pack
    loads, and the folder `save` writes to (the output directory now) must be listed."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([], set(FORMATS.values()))
    paths = folder_paths.folder_names_and_paths[FOLDER][0]
    for base in (folder_paths.models_dir, folder_paths.get_output_directory()):
        path = os.path.join(base, FOLDER)
        if path not in paths:
            paths.append(path)


def available() -> list:
    _register()
    return folder_paths.get_filename_list(FOLDER)


def path_of(name: str) -> str:
    _register()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"schedule_name: {name!r} is not in models/{FOLDER} or output/{FOLDER}")
    return path


def load(name: str) -> Schedule:
    """The schedule saved as `name`; a file that is not one is an error naming the input."""
    path = path_of(name)
    try:
        return Schedule.load(path)
    except ScheduleFileError as error:
        raise ValueError(f"schedule_name: {name!r} {error.reason}") from None


def save(schedule, filename_prefix: str, format: str) -> Path:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    folder = Path(folder_paths.get_output_directory()) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in filename_prefix) or "duca_schedule"
    number = 1
    while any((folder / f"{stem}_{number:05d}{ext}").exists() for ext in FORMATS.values()):
        number += 1
    path = folder / f"{stem}_{number:05d}{FORMATS[format]}"
    schedule.save(path)
    return path
