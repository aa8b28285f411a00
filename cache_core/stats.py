"""What a run did, step by step: for the log, the node's UI and benchmarks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .plan import timeline_letter

FLOPS, MODEL_CALLS = "FLOPs", "model calls"  # what a run's compute is counted in


@dataclass
class StepStats:
    step: int
    action: str = ""
    model_calls: int = 0
    compute_done: float = 0.0   # block compute run at this step (RunStats.compute_unit)
    compute_full: float = 0.0   # ... and what computing every block would have cost
    outside: float = 0.0        # FLOPs that ran outside the hooked blocks (never skipped by block caching)
    tokens_recomputed: int = 0
    tokens_total: int = 0
    cache_bytes: int = 0
    wall_seconds: float = 0.0

    @property
    def compute_fraction(self) -> float:
        """Of the whole model's compute at this step."""
        if self.compute_full + self.outside == 0:
            return 1.0
        return (self.compute_done + self.outside) / (self.compute_full + self.outside)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["compute_fraction"] = self.compute_fraction
        return data


@dataclass
class RunStats:
    method: str
    num_steps: int
    family: str = ""      # the registry's name of the model's family
    model_class: str = ""  # the host's class of the model (a family spans several)
    level: str = "block"  # token-wise / block / step / deepcache: the finest level that ran
    compute_unit: str = FLOPS  # FLOPs of the blocks, or model calls (families without block hooks)
    steps: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def at(self, step: int) -> StepStats:
        if step not in self.steps:
            self.steps[step] = StepStats(step)
        return self.steps[step]

    @property
    def timeline(self) -> str:
        return "".join((timeline_letter(self.steps[i].action) if i in self.steps else "-")
                       for i in range(self.num_steps))

    @property
    def compute_fraction(self) -> float:
        """Of the whole model's compute: what the run claims its speedup from."""
        outside = sum(s.outside for s in self.steps.values())
        full = sum(s.compute_full for s in self.steps.values()) + outside
        done = sum(s.compute_done for s in self.steps.values()) + outside
        return done / full if full else 1.0

    @property
    def block_fraction(self) -> float:
        """Of the hooked blocks' compute only (what a schedule's budget is a fraction of)."""
        full = sum(s.compute_full for s in self.steps.values())
        done = sum(s.compute_done for s in self.steps.values())
        return done / full if full else 1.0

    @property
    def peak_cache_bytes(self) -> int:
        return max((s.cache_bytes for s in self.steps.values()), default=0)

    @property
    def wall_seconds(self) -> float:
        return sum(s.wall_seconds for s in self.steps.values())

    def summary(self) -> str:
        expected = 1.0 / self.compute_fraction if self.compute_fraction > 0 else float("inf")
        return (f"{self.method}: {self.timeline} | compute {self.compute_fraction:.1%} "
                f"(up to {expected:.2f}x) | model time {self.wall_seconds:.2f}s | "
                f"cache {self.peak_cache_bytes / 2**20:.1f} MiB | level {self.level}")

    def to_dict(self) -> dict:
        return {"method": self.method, "num_steps": self.num_steps, "family": self.family,
                "model_class": self.model_class, "level": self.level,
                "compute_unit": self.compute_unit, "timeline": self.timeline,
                "compute_fraction": self.compute_fraction, "block_fraction": self.block_fraction,
                "peak_cache_bytes": self.peak_cache_bytes,
                "wall_seconds": self.wall_seconds, "notes": list(self.notes),
                "steps": [self.steps[i].to_dict() for i in sorted(self.steps)]}
