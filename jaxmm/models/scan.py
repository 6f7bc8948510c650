"""Parameters of scanned and per-layer transformer stacks: one layout to the other.

A stack built with `scan_layers=True` (`jaxmm.models.layers.Encoder`) keeps its blocks as one
`blocks` subtree whose leaves have a leading `[depth]` axis; without it, as `block_0` ..
`block_{depth-1}`. The numbers are the same, so checkpoints, converters and the PyTorch
references all use the per-layer layout and these functions move between the two:

    variables = stack_layers(convert.from_torch("vit_b16", state_dict))  # for scan_layers=True
    state_dict = convert.to_torch("vit_b16", unstack_layers(variables))

`match_layout` does whichever a target model needs, tower by tower (a CLIP may scan one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

SCANNED = "blocks"
_LAYER = re.compile(r"block_(\d+)")


def _layer_keys(tree: Mapping[str, Any]) -> list[str]:
    """`block_0` .. `block_{n-1}` of `tree` in order, if it has exactly those layers."""
    keys = sorted((k for k in tree if _LAYER.fullmatch(k)), key=lambda k: int(k[6:]))
    return keys if keys and keys == [f"block_{i}" for i in range(len(keys))] else []


def _leaves_map(fn, *trees):
    """`fn` over the leaves of nested mappings of identical structure."""
    if isinstance(trees[0], Mapping):
        return {k: _leaves_map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _stack(layers: list[Any]) -> Any:
    return _leaves_map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *layers)


def _unstack(tree: Any, index: int) -> Any:
    return _leaves_map(lambda leaf: np.asarray(leaf)[index], tree)


def _depth(tree: Any) -> int:
    while isinstance(tree, Mapping):
        tree = next(iter(tree.values()))
    return int(np.shape(tree)[0])


def stack_layers(tree: Any) -> Any:
    """Every `block_0..block_{n-1}` group becomes one `blocks` subtree stacked on axis 0."""
    if not isinstance(tree, Mapping):
        return tree
    layers = _layer_keys(tree)
    out = {k: stack_layers(v) for k, v in tree.items() if k not in layers}
    if layers:
        out[SCANNED] = _stack([tree[k] for k in layers])
    return out


def unstack_layers(tree: Any) -> Any:
    """Every `blocks` subtree becomes `block_0..block_{n-1}` (the inverse of `stack_layers`)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: unstack_layers(v) for k, v in tree.items() if k != SCANNED}
    if SCANNED in tree:
        stacked = tree[SCANNED]
        out |= {f"block_{i}": _unstack(stacked, i) for i in range(_depth(stacked))}
    return out


def match_layout(tree: Any, target: Any) -> Any:
    """`tree` in the layout of `target` (e.g. `jax.eval_shape(model.init, ...)`): groups of
    layers are stacked where `target` has `blocks` and unstacked where it has `block_i`."""
    if not isinstance(tree, Mapping) or not isinstance(target, Mapping):
        return tree
    if SCANNED in target and SCANNED not in tree and _layer_keys(tree):
        tree = stack_layers({k: tree[k] for k in _layer_keys(tree)}) | {
            k: v for k, v in tree.items() if not _LAYER.fullmatch(k)
        }
    elif SCANNED in tree and SCANNED not in target and _layer_keys(target):
        tree = {k: v for k, v in tree.items() if k != SCANNED} | unstack_layers(
            {SCANNED: tree[SCANNED]}
        )
    return {k: match_layout(v, target[k]) if k in target else v for k, v in tree.items()}


def without_scan(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Model overrides with every `scan_layers` (CLIP towers' too) set to False: the layout
    the PyTorch converters speak."""
    return {
        k: False if k == "scan_layers" else without_scan(v) if isinstance(v, Mapping) else v
        for k, v in overrides.items()
    }
