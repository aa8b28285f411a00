"""The pack's weight shortcut (a single block's MLP input computed from the weight's rows alone)
on layers whose weight is not what a plain Linear would multiply by: the host's fp8 and scaled-fp8
ops, its quantized layouts (`comfy.quant_ops`: each format its CPU backend runs), and other packs'
layers (GGUF-style) that dequantize or rescale their weight in their own forward. Each gives the same output through the shortcut as through its own forward, and a Flux
on fp8 weights runs DuCa's token-wise steps as the same Flux on those weights in float32 does."""
import inspect
import json

import pytest
import torch

from testbed import models

IN, OUT, START = 32, 96, 64  # linear1 of a single block: q, k, v columns first, the MLP input after


class Packed(torch.Tensor):
    """A quantized weight as a tensor subclass (int8 values; the scale lives on the layer)."""

    @staticmethod
    def wrap(values: torch.Tensor) -> "Packed":
        return torch.Tensor._make_subclass(Packed, values)


class DequantizingLinear(torch.nn.Linear):
    """Stands in for a GGUF-style layer: int8 weight in a tensor subclass, dequantized per call."""

    def __init__(self, weight, bias):
        super().__init__(weight.shape[1], weight.shape[0], bias=True)
        self.scale = weight.abs().amax(1, keepdim=True) / 127
        self.weight = torch.nn.Parameter(Packed.wrap(torch.round(weight / self.scale).to(torch.int8)),
                                         requires_grad=False)
        self.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.as_subclass(torch.Tensor).to(x.dtype) * self.scale, self.bias)


class RescalingLinear(torch.nn.Linear):
    """A plain float32 weight that means something only with the layer's own scale (as a scaled
    quantization keeps it): a shortcut reading the weight directly would be wrong."""

    def __init__(self, weight, bias):
        super().__init__(weight.shape[1], weight.shape[0], bias=True)
        self.weight = torch.nn.Parameter(weight / 4, requires_grad=False)
        self.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight * 4, self.bias)


def host_linear(operations, weight, bias, weight_dtype=torch.float32):
    layer = operations.Linear(IN, OUT, bias=True, dtype=weight_dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.to(weight_dtype))
        layer.bias.copy_(bias)
    return layer


# The host's quantized formats whose weight a CPU can hold and multiply by (the others need a GPU
# kernel): storage dtype and the largest value it keeps.
CPU_FORMATS = {"float8_e4m3fn": (torch.float8_e4m3fn, 448.0), "int8_tensorwise": (torch.int8, 127.0)}


def host_quantized_linear(fmt: str, weight, bias):
    """A Linear of the host's mixed-precision ops holding `weight` in one of its quantized formats,
    loaded as the host loads a quantized checkpoint: the format by layer name in the ops' config
    (ComfyUI 0.3.75), or in the layer's own `comfy_quant` entry (newer)."""
    import comfy.ops
    storage, largest = CPU_FORMATS[fmt]
    scale = weight.abs().amax() / largest
    values = weight / scale
    state = {"layer.weight": (values.round() if storage == torch.int8 else values).to(storage),
             "layer.bias": bias, "layer.weight_scale": scale.reshape(())}
    if "layer_quant_config" in inspect.signature(comfy.ops.mixed_precision_ops).parameters:
        ops = comfy.ops.mixed_precision_ops({"layer": {"format": fmt}}, compute_dtype=torch.float32)
    else:
        ops = comfy.ops.mixed_precision_ops({}, compute_dtype=torch.float32)
        state["layer.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    holder = torch.nn.Module()
    holder.layer = ops.Linear(IN, OUT, bias=True)
    holder.load_state_dict(state, strict=False)
    return holder.layer


def host_formats() -> list:
    """The host's quantized formats a CPU runs (feature-detected: each host version has its own)."""
    try:
        from comfy.quant_ops import QUANT_ALGOS
    except ImportError:
        return []
    return [fmt for fmt in CPU_FORMATS if fmt in QUANT_ALGOS]


def layers():
    import comfy.ops
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(OUT, IN, generator=gen) * 0.1, torch.randn(OUT, generator=gen) * 0.1
    found = {
        "host plain": (host_linear(comfy.ops.disable_weight_init, weight, bias), True),
        "host fp8 (manual cast)": (host_linear(comfy.ops.manual_cast, weight, bias, torch.float8_e4m3fn), False),
        "GGUF-style dequantizing": (DequantizingLinear(weight, bias), False),
        "rescaling in its forward": (RescalingLinear(weight, bias), False),
    }
    if hasattr(comfy.ops, "scaled_fp8_ops"):  # ComfyUI 0.3.75's scaled fp8 (newer hosts: quant_ops layouts)
        scaled = host_linear(comfy.ops.scaled_fp8_ops(), weight / 2, bias, torch.float8_e4m3fn)
        scaled.scale_weight = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)
        found["host scaled fp8"] = (scaled, False)
    for fmt in host_formats():
        found[f"host quantized {fmt}"] = (host_quantized_linear(fmt, weight, bias), False)
    return found


LAYERS = ["host plain", "host fp8 (manual cast)", "host scaled fp8", "GGUF-style dequantizing",
          "rescaling in its forward", *(f"host quantized {fmt}" for fmt in CPU_FORMATS)]


@pytest.mark.parametrize("name", LAYERS)
def test_the_shortcut_gives_what_the_layers_own_forward_gives(pack, name):
    from comfyui_duca.adapters.flux import mlp_input, plain_weights
    built = layers()
    if name not in built:
        pytest.skip(f"{name}: this ComfyUI has no such layer (a layout or op of another host version)")
    layer, plain = built[name]
    x = torch.randn(2, 5, IN, generator=torch.Generator().manual_seed(1))
    assert plain_weights(layer) == plain
    expected = layer(x)[..., START:]
    assert torch.allclose(mlp_input(layer, x, START), expected, rtol=1e-5, atol=1e-6)
    if name in ("host scaled fp8", "GGUF-style dequantizing", "rescaling in its forward"):  # read as plain, it means something else
        as_plain = torch.nn.functional.linear(x, layer.weight.as_subclass(torch.Tensor).float()[START:],
                                              layer.bias[START:].float())
        assert not torch.allclose(as_plain, expected, atol=1e-3)


def fp8_flux_and_its_float32_twin():
    """The small Flux with fp8 weights (the host's manual-cast ops, computing in float32), and the
    same model in float32 holding exactly the fp8-rounded weights."""
    import comfy.supported_models
    twin = models.flux(seed=0)
    dm = twin.model.diffusion_model
    config = comfy.supported_models.Flux(dict(twin.model.model_config.unet_config))
    config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
    fp8 = config.get_model({})
    state = {k: v.to(torch.float8_e4m3fn) if v.dtype == torch.float32 and v.dim() == 2 else v
             for k, v in dm.state_dict().items()}
    fp8.diffusion_model.load_state_dict(state)
    with torch.no_grad():  # the twin gets the values the fp8 model really holds
        for name, p in fp8.diffusion_model.named_parameters():
            dict(dm.named_parameters())[name].copy_(p.float())
    fp8.diffusion_model.eval()
    return models.patcher(fp8), twin


def test_a_flux_on_fp8_weights_runs_token_wise_steps_as_its_float32_twin(pack, duca):
    patch, core = duca
    fp8, twin = fp8_flux_and_its_float32_twin()
    linear1 = fp8.model.diffusion_model.single_blocks[0].linear1
    assert linear1.weight.dtype == torch.float8_e4m3fn and linear1.comfy_cast_weights
    conds = models.flux_conditioning(model=twin, seed=1), models.flux_conditioning(model=twin, seed=2)
    kw = dict(steps=10, cfg=3.5, height=64, width=64)
    outs, stats = {}, {}
    for name, model in (("fp8", fp8), ("twin", twin)):
        assert torch.equal(models.sample(patch.apply_method(model, core.DuCaConfig(plan=core.all_full_plan(10))),
                                         *conds, **kw), models.sample(model, *conds, **kw))
        accelerated = patch.apply_method(model, core.PRESETS["balanced"])
        outs[name] = models.sample(accelerated, *conds, **kw)
        stats[name] = patch.last_stats(accelerated)
    assert stats["fp8"].timeline == stats["twin"].timeline and "C" in stats["fp8"].timeline
    assert stats["fp8"].level == "token-wise" and not stats["fp8"].notes
    assert torch.allclose(outs["fp8"], outs["twin"], rtol=1e-4, atol=1e-4)
