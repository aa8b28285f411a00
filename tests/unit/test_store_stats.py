"""The per-run cache store and run statistics."""
import torch

from comfyui_duca.cache_core import CacheStore, RunStats


def test_store_keeps_entries_per_group_and_counts_bytes():
    store = CacheStore()
    store.put("cond", "block0", {"a": torch.zeros(4, 8), "b": torch.zeros(2, dtype=torch.float16)})
    store.put("uncond", "residual", torch.zeros(10))
    assert store.has("cond", "block0") and not store.has("uncond", "block0")
    assert store.nbytes() == 4 * 8 * 4 + 2 * 2 + 10 * 4
    assert store.get("cond", "residual") is None and store.get("uncond", "residual").shape == (10,)
    store.clear()
    assert store.nbytes() == 0


def test_store_offloads_and_returns_to_the_asked_device():
    store = CacheStore(offload_device=torch.device("cpu"))
    store.put("k", "x", {"t": torch.ones(3)})
    assert store.get("k", "x")["t"].device.type == "cpu"
    assert store.get("k", "x", device="cpu")["t"].sum() == 3


def test_run_stats_timeline_fraction_and_dict():
    stats = RunStats("duca", 3)
    for step, (action, done) in enumerate([("full", 10.0), ("conservative", 2.0), ("aggressive", 0.0)]):
        rec = stats.at(step)
        rec.action, rec.compute_done, rec.compute_full = action, done, 10.0
        rec.wall_seconds = 0.5
    assert stats.timeline == "FCA"
    assert abs(stats.compute_fraction - 0.4) < 1e-9
    data = stats.to_dict()
    assert data["timeline"] == "FCA" and len(data["steps"]) == 3
    assert "40.0%" in stats.summary()


def test_append_keeps_the_last_entries_and_offloads_them():
    store = CacheStore(offload_device=torch.device("cpu"))
    for i in range(4):
        store.append("cond", "points", (float(i), torch.full((2,), float(i))), keep_last=2)
    points = store.get("cond", "points")
    assert [t for t, _ in points] == [2.0, 3.0] and store.nbytes() == 2 * 2 * 4
    store.append("cond", "all", (0.0, torch.zeros(1)))
    store.append("cond", "all", (1.0, torch.zeros(1)))
    assert len(store.get("cond", "all")) == 2
