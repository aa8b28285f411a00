"""Which cache entry a model call or a step's cond batch belongs to (methods.engine): what must
never share forecast points, host-free."""
import types

import torch

from comfyui_duca.methods.engine import cond_batch_group, conditioning_group

X = torch.zeros(1, 4, 8, 8)


def entry(uuid, start=None, end=None):
    """One conditioning entry as the host's cond batch carries it (ConditioningSetTimestepRange
    sets the sigmas it is active between)."""
    out = {"uuid": uuid}
    if start is not None:
        out["timestep_start"], out["timestep_end"] = start, end
    return out


def window(*frames):
    return {"context_window": types.SimpleNamespace(index_list=list(frames))}


def test_a_cond_batch_is_keyed_by_each_slots_entries_and_the_sample_shape():
    base = cond_batch_group([[entry("a")], [entry("n")]], X, 0.5, {})
    assert cond_batch_group([[entry("a")], [entry("n")]], X, 0.9, {}) == base  # any step of the run
    assert cond_batch_group([[entry("b")], [entry("n")]], X, 0.5, {}) != base  # another prompt
    assert cond_batch_group([[entry("a")], None], X, 0.5, {}) != base        # cfg 1: no negative
    assert cond_batch_group([[entry("a")], [entry("n")]], torch.zeros(2, 4, 8, 8), 0.5, {}) != base  # batch
    assert cond_batch_group([[entry("a")], [entry("n")]], torch.zeros(1, 4, 8, 6), 0.5, {}) != base  # size


def test_entries_outside_their_timestep_range_are_left_out_as_the_host_leaves_them_out():
    """Prompt a on sigmas 1..0.5, prompt b on 0.5..0: the key changes where the prompts switch."""
    conds = [[entry("a", 1.0, 0.5), entry("b", 0.5, 0.0)], None]
    early, late = cond_batch_group(conds, X, 0.8, {}), cond_batch_group(conds, X, 0.3, {})
    assert early[0] == (("a",), None) and late[0] == (("b",), None)
    assert cond_batch_group(conds, X, 0.5, {})[0] == (("a", "b"), None)  # both ranges hold it


def test_each_context_window_has_a_key_of_its_own():
    conds = [[entry("a")], None]
    keys = {cond_batch_group(conds, X, 0.5, window(*frames)) for frames in ((0, 1, 2, 3), (2, 3, 4, 5))}
    assert len(keys) == 2
    calls = {conditioning_group(X, {"uuids": ["a"], "cond_or_uncond": [0], **window(*frames)})
             for frames in ((0, 1, 2, 3), (2, 3, 4, 5))}
    assert len(calls) == 2
