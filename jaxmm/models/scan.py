"""Parameters of scanned and per-layer stacks: one layout to the other.

A stack built with `scan_layers=True` keeps its repeated blocks as one subtree whose leaves
have a leading `[steps]` axis; without it, as one subtree per block. The numbers are the
same, so checkpoints, converters and the PyTorch references all use the per-layer layout and
these functions move between the two:

    variables = stack_layers(convert.from_torch("vit_b16", state_dict))  # for scan_layers=True
    state_dict = convert.to_torch("vit_b16", unstack_layers(variables))

The groups (`GROUPS`): a transformer encoder's `block_0 .. block_{n-1}` <-> `blocks`
(`jaxmm.models.layers.Encoder`), and a Swin stage's `layers_{i}_blocks_{0 .. n-1}` <->
`layers_{i}_blocks` holding `unshifted` (the even blocks) and `shifted` (the odd ones), the
pair a scanned stage repeats (`jaxmm.models.swin.SwinBlockPair`). `match_layout` does
whichever a target model needs, group by group (a CLIP may scan one tower only).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Group:
    """How one kind of repeated block is named in the two layouts.

    Attributes:
        layer: a per-layer key; its `stem` group names the scanned key, `index` the layer.
        scanned: the scanned key, formatted from the stem.
        roles: for a scan step of several blocks, the names of its blocks in order (block
            `k * len(roles) + r` is step k's `roles[r]`); empty for one block per step.
    """

    layer: re.Pattern
    scanned: str
    roles: tuple[str, ...] = ()

    def stem(self, key: str) -> str | None:
        """The stem of a scanned key of this group, else None."""
        pattern = re.escape(self.scanned).replace(re.escape("{stem}"), "(?P<stem>.+)")
        found = re.fullmatch(pattern, key)
        if not found:
            return None
        stem = found.group("stem")
        return stem if self.layer.fullmatch(f"{stem}_0") else None


GROUPS = (
    Group(re.compile(r"(?P<stem>block)_(?P<index>\d+)"), "{stem}s"),
    Group(
        re.compile(r"(?P<stem>layers_\d+_blocks)_(?P<index>\d+)"),
        "{stem}",
        ("unshifted", "shifted"),
    ),
)


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


def _per_layer_groups(tree: Mapping[str, Any]) -> dict[str, tuple[Group, list[str]]]:
    """Scanned key -> (group, per-layer keys in order) for every complete group in `tree`:
    indices 0..n-1 without gaps, n a multiple of the group's step."""
    found: dict[str, tuple[Group, dict[int, str]]] = {}
    for key in tree:
        for group in GROUPS:
            if match := group.layer.fullmatch(key):
                scanned = group.scanned.format(stem=match.group("stem"))
                found.setdefault(scanned, (group, {}))[1][int(match.group("index"))] = key
    groups = {}
    for scanned, (group, by_index) in found.items():
        complete = sorted(by_index) == list(range(len(by_index)))
        if complete and len(by_index) % max(len(group.roles), 1) == 0:
            groups[scanned] = (group, [by_index[i] for i in range(len(by_index))])
    return groups


def _scanned_group(key: str) -> Group | None:
    return next((group for group in GROUPS if group.stem(key) is not None), None)


def _stacked(group: Group, layers: list[Any]) -> Any:
    if not group.roles:
        return _stack(layers)
    step = len(group.roles)
    return {role: _stack(layers[r::step]) for r, role in enumerate(group.roles)}


def _unstacked(group: Group, key: str, stacked: Any) -> dict[str, Any]:
    stem = group.stem(key)
    if not group.roles:
        return {f"{stem}_{i}": _unstack(stacked, i) for i in range(_depth(stacked))}
    step, out = len(group.roles), {}
    for r, role in enumerate(group.roles):
        for k in range(_depth(stacked[role])):
            out[f"{stem}_{k * step + r}"] = _unstack(stacked[role], k)
    return dict(sorted(out.items(), key=lambda item: int(item[0].rsplit("_", 1)[1])))


def stack_layers(tree: Any) -> Any:
    """Every group of per-layer blocks becomes its scanned subtree (see `GROUPS`)."""
    if not isinstance(tree, Mapping):
        return tree
    groups = _per_layer_groups(tree)
    grouped = {key for _, keys in groups.values() for key in keys}
    out = {k: stack_layers(v) for k, v in tree.items() if k not in grouped}
    for scanned, (group, keys) in groups.items():
        out[scanned] = _stacked(group, [tree[k] for k in keys])
    return out


def unstack_layers(tree: Any) -> Any:
    """Every scanned subtree becomes its per-layer blocks (the inverse of `stack_layers`)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {}
    for key, value in tree.items():
        group = _scanned_group(key)
        out |= {key: unstack_layers(value)} if group is None else _unstacked(group, key, value)
    return out


def match_layout(tree: Any, target: Any) -> Any:
    """`tree` in the layout of `target` (e.g. `jax.eval_shape(model.init, ...)`): groups of
    blocks are stacked where `target` has them scanned and unstacked where it has them per
    layer."""
    if not isinstance(tree, Mapping) or not isinstance(target, Mapping):
        return tree
    out = dict(tree)
    for scanned, (group, keys) in _per_layer_groups(tree).items():
        if scanned in target and keys[0] not in target:
            for key in keys:
                del out[key]
            out[scanned] = _stacked(group, [tree[k] for k in keys])
    for key in list(out):
        group = _scanned_group(key)
        if group is not None and key not in target and f"{group.stem(key)}_0" in target:
            out |= _unstacked(group, key, out.pop(key))
    return {k: match_layout(v, target[k]) if k in target else v for k, v in out.items()}


def without_scan(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Model overrides with every `scan_layers` (CLIP towers' too) set to False: the layout
    the PyTorch converters speak."""
    return {
        k: False if k == "scan_layers" else without_scan(v) if isinstance(v, Mapping) else v
        for k, v in overrides.items()
    }
