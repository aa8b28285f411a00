"""What every family adapter shares: its blocks as an ordered list of `patches_replace` ids."""
from __future__ import annotations


class FamilyAdapter:
    """How a family's model is cut into cacheable units.

    `block_ids`: ("double_block" | "single_block", index) in the order the model runs them
    (empty for families without block hooks). `family` is the registry's name, set when found.
    """
    block_ids: list
    family: str = ""
    model_class: str = ""  # the host's class of the diffusion model (a family spans several)
    level: str = "block"  # token-wise / block / step / deepcache: the finest level it is cached at
    tokenwise = False     # conservative steps can refresh tokens inside its blocks
    step_level = False    # no block hooks: whole model calls are the unit (step_level.py)
    view = None           # a BlockView where the host's block arguments differ from {"img": tensor, ...}

    @property
    def label(self) -> str:
        """The family and the model's own class, as logs and stats name them: `flux (Flux2)`."""
        detail = ", ".join(part for part in (self.model_class, getattr(self, "variant", "")) if part)
        return f"{self.family} ({detail})" if detail else self.family

    @property
    def first_block(self):
        return self.block_ids[0]

    @property
    def last_block(self):
        return self.block_ids[-1]

    def layer_position(self, kind: str, index: int):
        """(position in the stack, stack depth), for per-layer refresh ratios."""
        if getattr(self, "_positions", None) is None:
            self._positions = {block_id: i for i, block_id in enumerate(self.block_ids)}
        return self._positions[(kind, index)], len(self.block_ids)

    def schedule_units(self) -> list:
        """Names of the units a schedule decides on, in run order."""
        if self.step_level:
            return ["model"]
        return [f"{kind}.{index}" for kind, index in self.block_ids]

    @staticmethod
    def can_refresh(kind: str, args: dict) -> bool:
        """False when this block call can't be refreshed token-wise (it is computed instead)."""
        return True

    @staticmethod
    def grid(x) -> tuple:
        """The token grid of the model input (only token-wise refresh needs it)."""
        return ()


class BlockView:
    """The host's block arguments and outputs as the methods read them, and back: the hidden state a
    tensor under "img". A family whose blocks take it otherwise (LTX-2 passes a (video, audio) pair)
    has one; the methods never see the host's layout."""

    def args_in(self, args: dict) -> dict:
        raise NotImplementedError

    def args_out(self, args: dict) -> dict:
        raise NotImplementedError

    def output_in(self, out: dict) -> dict:
        return self.args_in(out)

    def output_out(self, out: dict) -> dict:
        return self.args_out(out)


class PairedState(BlockView):
    """"img" holds a pair of streams (LTX-2: video tokens, audio tokens); the second goes under its own key."""

    def __init__(self, second: str):
        self.second = second

    def args_in(self, args: dict) -> dict:
        first, second = args["img"]
        return {**args, "img": first, self.second: second}

    def args_out(self, args: dict) -> dict:
        host = {key: value for key, value in args.items() if key != self.second}
        host["img"] = (args["img"], args[self.second])
        return host


def viewed(view: BlockView, original):
    """The host's original block, called with the methods' arguments and answering in them."""
    return lambda args: view.output_in(original(view.args_out(args)))
