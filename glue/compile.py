"""Living beside ComfyUI's TorchCompileModel (in either order).

torch.compile traces whatever a compiled model calls. The pack's per-step bookkeeping (which step,
which action, what is kept) would turn into guards that fail at every step, so dynamo would
recompile up to its limit and then fall back to eager. So the pack's entry points run eagerly
(`methods.attach.outside_compile`), and when the host compiles the whole diffusion model, the run compiles each
hooked block on its own instead, with the same settings (`compile_hooked_blocks`): the blocks
that run are still compiled code, the forward hooks the pack puts on their modules included (dynamo traces
them into the graph; a new hook of the same code does not recompile).
"""
from __future__ import annotations

import inspect

import torch

COMPILE_KEY = "torch.compile"           # the host's compile wrapper key (TorchCompileModel)
COMPILE_KWARGS = "torch_compile_kwargs"  # model option: the settings it compiled with
WHOLE_MODEL = "diffusion_model"


def blocks_swapped_in(compiled: dict):
    """An APPLY_MODEL wrapper that puts `compiled` (module path -> compiled module) in place for
    the call and puts the originals back after it (as the host's own compile wrapper does)."""
    import comfy.utils

    def wrapper(executor, *args, **kwargs):
        base_model, originals = executor.class_obj, {}
        try:
            for path, module in compiled.items():
                originals[path] = comfy.utils.set_attr(base_model, path, module)
            return executor(*args, **kwargs)
        finally:
            for path, module in originals.items():
                comfy.utils.set_attr(base_model, path, module)
    return wrapper


def _compiled_keys(wrapper) -> list:
    """The module paths a host compile wrapper swaps in (empty when it can't be told)."""
    try:
        compiled = inspect.getclosurevars(wrapper).nonlocals.get("compiled_module_dict")
    except TypeError:
        return []
    return list(compiled) if isinstance(compiled, dict) else []


def compile_hooked_blocks(model_options: dict, base_model, blocks: list, cache: dict) -> bool:
    """If the host's TorchCompileModel compiles the whole diffusion model in these (the run's own)
    options, compile `blocks` one by one instead, with the same settings. `cache` keeps the
    compiled blocks between runs. True when it did."""
    import comfy.patcher_extension as ext
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {}).get(ext.WrappersMP.APPLY_MODEL, {})
    host_wrappers = wrappers.get(COMPILE_KEY)
    settings = model_options.get(COMPILE_KWARGS)
    if not host_wrappers or settings is None or not blocks:
        return False
    if [_compiled_keys(w) for w in host_wrappers] != [[WHOLE_MODEL]]:  # blocks the user picked: keep
        return False
    paths = {id(m): f"{WHOLE_MODEL}.{name}" for name, m in base_model.diffusion_model.named_modules()}
    if any(id(block) not in paths for block in blocks):  # blocks held elsewhere: keep the host's compile
        return False
    swapped = {}
    for block in blocks:
        key = (id(block), tuple(sorted((k, repr(v)) for k, v in settings.items())))
        if key not in cache:
            cache[key] = torch.compile(block, **settings)
        swapped[paths[id(block)]] = cache[key]
    wrappers[COMPILE_KEY] = [blocks_swapped_in(swapped)]
    return True
