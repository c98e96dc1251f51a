"""The FLOP bound of a conv VAE: the FLOPs of its convolutions and matmuls, and the time this
machine takes for exactly those layers, each alone at the training batch size.

Per layer and example, forward costs 2·MACs, and backward 2·MACs for the weight gradient plus
2·MACs for the input gradient; the first layer's input (the images) needs no gradient, which
autograd skips. MACs: Conv2d, output elements × C_in × k²; ConvTranspose2d, input elements ×
C_out × k²; Linear, in × out. Biases, activations, the loss, the KL and the optimizer are not
counted. The layers are read from the model vae-bench builds, so the count follows its config.
"""

from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

from benchkit.machine import flops_per_second, load_now

LINEAR_ALGEBRA = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
# (name, dtype under autocast or None, memory format): the settings whose bound is measured.
SETTINGS = {"fp32": (None, torch.contiguous_format),
            "fp32_channels_last": (None, torch.channels_last),
            "bf16": (torch.bfloat16, torch.contiguous_format),
            "bf16_channels_last": (torch.bfloat16, torch.channels_last)}


def model_layers(model: nn.Module, image_shape: tuple[int, int, int]) -> list[dict]:
    """Each convolution and Linear of `model` with its per-example input shape and MACs, in the
    order a training step's forward pass meets them (one pass of one image through encode and
    decode)."""
    found: list[dict] = []

    def record(module, inputs, output):
        layer_input = inputs[0]
        if isinstance(module, nn.Conv2d):
            macs = output[0].numel() * module.in_channels // module.groups * _kernel(module)
        elif isinstance(module, nn.ConvTranspose2d):
            macs = layer_input[0].numel() * module.out_channels // module.groups * _kernel(module)
        else:
            macs = module.in_features * module.out_features
        found.append({"module": module, "input_shape": tuple(layer_input.shape[1:]),
                      "macs": macs})

    names = {module: name for name, module in model.named_modules()}
    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, LINEAR_ALGEBRA)]
    try:
        with torch.no_grad():
            posterior = model.encode(torch.zeros(1, *image_shape))
            model.decode(posterior.mu)
    finally:
        for hook in hooks:
            hook.remove()
    for index, layer in enumerate(found):
        layer["name"] = names[layer["module"]]
        layer["input_grad"] = index > 0  # the images need no gradient
        passes = 3 if layer["input_grad"] else 2
        layer["train_flops"] = 2 * layer["macs"] * passes
    return found


def _kernel(module) -> int:
    return module.kernel_size[0] * module.kernel_size[1]


def flop_note(layers: list[dict]) -> str:
    return ("per example: forward 2*MACs, weight gradient 2*MACs, input gradient 2*MACs (not for "
            f"the first layer, whose input needs no gradient), over {len(layers)} layers ("
            + ", ".join(f"{layer['name']} {layer['macs']:,} MACs" for layer in layers)
            + f") = {sum(layer['train_flops'] for layer in layers):,} FLOP; biases, "
            "activations, loss, KL and optimizer not counted")


def layer_times(layers: list[dict], setting: str, batch: int, repeats: int = 3,
                min_seconds: float = 0.2) -> dict:
    """Seconds per training step of each layer alone (forward + the backward it needs) at this
    batch size, under `setting`'s precision and memory layout; the sum is the bound."""
    autocast_dtype, memory_format = SETTINGS[setting]
    generator = torch.Generator().manual_seed(0)
    device = torch.device("cpu")
    rows = []
    for layer in layers:
        module = copy.deepcopy(layer["module"]).train()
        x = torch.randn(batch, *layer["input_shape"], generator=generator)
        if x.dim() == 4:
            module = module.to(memory_format=memory_format)
            x = x.contiguous(memory_format=memory_format)
        x.requires_grad_(layer["input_grad"])
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            grad_output = torch.randn_like(module(x))

        def one_step(module=module, x=x, grad_output=grad_output):
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                y = module(x)
            y.backward(grad_output)
            module.zero_grad(set_to_none=True)
            x.grad = None

        flops = layer["train_flops"] * batch
        samples = flops_per_second(one_step, flops, device, repeats, min_seconds)
        gflops = statistics.median(samples) / 1e9
        rows.append({"name": layer["name"], "flops_per_step": flops,
                     "gflops": round(gflops, 2), "seconds_per_step": flops / (gflops * 1e9)})
    return {"setting": setting, "layers": rows,
            "seconds_per_step": sum(row["seconds_per_step"] for row in rows),
            "load": load_now()}
