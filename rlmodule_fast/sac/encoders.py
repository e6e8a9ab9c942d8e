"""SAC's Q-function encoder for continuous actions: RLlib 2.60's ``TorchMultiStreamEncoder``
with its parameter names (``base_encoders.{actions,obs}.net.mlp.N.*``, ``fusion_layers.N.*``,
``output_layer.*``), so state dicts move between RLlib's SAC module and ours unchanged.

Shape legend: B batch, D flattened obs, A action dims, H latent, F fusion widths.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..models.initializers import get_initializer_fn
from ..ops.reference import activation_fn


class TorchMultiStreamEncoder(nn.Module):
    """One encoder per input stream, their outputs concatenated (``embeds``, in sorted key order)
    and fused: ``fusion_layers[0](embeds)``, then each further fusion layer and the output layer
    read ``cat([out, embeds])`` (RLlib's skip connections); every layer is followed by
    ``activation``.

    forward({"actions": [B, A], "obs": [B, D]}) -> [B, H] (``output_dim``).
    """

    def __init__(self, base_encoders: Mapping[str, nn.Module], fusion_hiddens: list[int], activation: str,
                 output_dim: int, init: Optional[dict] = None):
        """``init``: ``models.initializers.stack_initializers(cfg, "fusionnet")``, applied as
        RLlib does (every fusion layer's kernel, then their biases; then the output layer's), so
        a seed gives RLlib's weights. Build ``base_encoders`` in sorted key order for that too."""
        super().__init__()
        self.keys = sorted(base_encoders)
        self.base_encoders = nn.ModuleDict({k: base_encoders[k] for k in self.keys})
        self.activation = activation
        embed = sum(int(base_encoders[k].output_dim) for k in self.keys)
        dims = [embed] + [h + embed for h in fusion_hiddens[:-1]]
        self.fusion_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, fusion_hiddens))
        init = init or {}
        k_fn = get_initializer_fn(init.get("kernel"), what="model config 'fusionnet_kernel_initializer'")
        b_fn = get_initializer_fn(init.get("bias"), what="model config 'fusionnet_bias_initializer'")
        for fns, attr, kw in ((k_fn, "weight", "kernel_kwargs"), (b_fn, "bias", "bias_kwargs")):
            if fns is not None and len(self.fusion_layers):
                for layer in self.fusion_layers:
                    fns(getattr(layer, attr), **(init.get(kw) or {}))
        self.output_layer = nn.Linear(fusion_hiddens[-1] + embed if fusion_hiddens else embed, output_dim)
        if k_fn is not None:
            k_fn(self.output_layer.weight, **(init.get("kernel_kwargs") or {}))
        if b_fn is not None:
            b_fn(self.output_layer.bias, **(init.get("bias_kwargs") or {}))
        self.output_dim = output_dim

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        act = activation_fn(self.activation)
        embeds = torch.cat([self.base_encoders[k](inputs[k]) for k in self.keys], dim=-1)
        out = embeds
        for i, layer in enumerate(self.fusion_layers):
            out = act(layer(embeds if i == 0 else torch.cat([out, embeds], dim=-1)))
        if len(self.fusion_layers):
            out = torch.cat([out, embeds], dim=-1)
        return act(self.output_layer(out))
