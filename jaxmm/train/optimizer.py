"""Optimizers with linear warmup and cosine decay: AdamW (CLIP paper section 2.5, ViT/Swin
recipes) or SGD with momentum (the ResNet/VGG/AlexNet recipes), picked by `optim.name`.

Parameter groups, by '/'-joined parameter-path prefix (`'image_tower'`,
`'text_tower/block_0'`):
- `optim.lr_multipliers` scales the whole update of a group, as a PyTorch param group's `lr`
  would (AdamW's decoupled weight decay and SGD's momentum step included): `{'image_tower':
  0.1}` fine-tunes a pretrained tower ten times more gently than a fresh head. The longest
  matching prefix wins; other parameters get 1.
- `optim.frozen` is the familiar spelling of multiplier 0: those parameters are locked. They
  get no update (so weight decay does not shrink them either), carry no optimizer state, and
  modules whose parameters are all locked run in inference mode (`ParamGroups.is_locked`,
  used by the train step). `("image_tower",)` is locked-image tuning (LiT, Zhai et al. 2022)
  with a converted image tower; freezing everything but a classifier's head gives a
  fine-tuned linear probe.

Weight decay applies to weight matrices and convolution kernels only: never to
biases, norm parameters, embeddings (token, positional, class token) or the
temperature, all of which have no `kernel` in their name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import optax
from flax import linen as nn

if TYPE_CHECKING:  # annotations only: the optimizer must build on hosts without ml_collections
    from ml_collections import ConfigDict


def learning_rate_schedule(config: ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `config.learning_rate`, then cosine decay to `end_factor`."""
    warmup = min(config.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.end_factor,
    )


def weight_decay_mask(params) -> dict:
    """True for the leaves named `kernel`; accepts boxed (logically partitioned) params."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", nn.unbox(params)
    )


def path_name(path: tuple[Any, ...]) -> str:
    """`'image_tower/block_0/kernel'` from a pytree key path or a tuple of names."""
    return "/".join(str(getattr(key, "key", key)) for key in path)


def _under(name: str, prefix: str) -> bool:
    """Whether `name` is `prefix` or lies below it (whole path components only)."""
    return name == prefix or name.startswith(prefix + "/")


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """Learning-rate multipliers by parameter-path prefix; 0 locks the parameters.

    Attributes:
        multipliers: prefix -> multiplier (no trailing '/').
        origin: prefix -> the config key that set it, for error messages.
    """

    multipliers: dict[str, float]
    origin: dict[str, str]

    @classmethod
    def from_config(cls, config: ConfigDict) -> ParamGroups:
        """The groups of `optim.lr_multipliers` and `optim.frozen` (prefixes at 0).

        Raises:
            ValueError: an empty prefix, a negative or non-finite multiplier, or a prefix
                given two different multipliers (e.g. frozen and also 0.1).
        """
        multipliers, origin = {}, {}
        entries = [
            (prefix, value, "optim.lr_multipliers")
            for prefix, value in config.get("lr_multipliers", {}).items()
        ]
        entries += [(prefix, 0.0, "optim.frozen") for prefix in config.get("frozen", ())]
        for prefix, value, key in entries:
            name = str(prefix).strip("/")
            if not name:
                raise ValueError(f"{key}: an empty parameter-path prefix {prefix!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key}[{prefix!r}] = {value}: multipliers must be >= 0")
            if multipliers.get(name, value) != value:
                raise ValueError(
                    f"{key} gives {prefix!r} multiplier {value} but {origin[name]} gives it "
                    f"{multipliers[name]} (optim.frozen means multiplier 0)"
                )
            multipliers[name], origin[name] = float(value), key
        return cls(multipliers, origin)

    def __bool__(self) -> bool:
        return bool(self.multipliers)

    def multiplier(self, name: str) -> float:
        """The multiplier of the parameter `name`: its longest matching prefix's, else 1."""
        matches = [prefix for prefix in self.multipliers if _under(name, prefix)]
        return self.multipliers[max(matches, key=len)] if matches else 1.0

    def is_locked(self, module_path: tuple[str, ...]) -> bool:
        """Whether every parameter under the module at `module_path` has multiplier 0.

        A locked module's parameters never change, so the train step runs it in inference
        mode (no dropout, BatchNorm on its running statistics, which then stay as loaded),
        as LiT runs its locked tower. A module holding any trained parameter is not locked:
        `{'image_tower': 0, 'image_tower/head': 1}` trains the head in train mode.
        """
        name = path_name(module_path)
        if not name or self.multiplier(name) != 0:
            return False
        below = [m for prefix, m in self.multipliers.items() if prefix.startswith(name + "/")]
        return not any(below)

    def labels(self, params: Any) -> Any:
        """`'frozen'` (multiplier 0) or `'trained'` per leaf of `params` (boxed or not).

        Raises:
            ValueError: a prefix matches no parameter; the message names it, the config key
                it came from and the top-level parameter names.
        """
        params = nn.unbox(params)
        names = [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
        unmatched = [p for p in self.multipliers if not any(_under(n, p) for n in names)]
        if unmatched:
            raise ValueError(
                "no parameter lies under "
                + ", ".join(f"{self.origin[p]} prefix {p!r}" for p in unmatched)
                + f"; the top-level parameters are {sorted(params)}"
            )
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if self.multiplier(path_name(path)) == 0 else "trained",
            params,
        )

    def scale_updates(self) -> optax.GradientTransformation:
        """Multiplies each update by its parameter's multiplier (stateless).

        Inside `optax.multi_transform` the frozen leaves are empty `MaskedNode`s, so the
        tree map only meets trained ones.
        """

        def update(updates, state, params=None):
            del params
            scaled = jax.tree_util.tree_map_with_path(
                lambda path, u: u * self.multiplier(path_name(path)), updates
            )
            return scaled, state

        return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (when `grad_clip_norm` > 0), then the optimizer with the masked
    weight decay and the schedule, then the parameter groups' multipliers."""
    schedule = learning_rate_schedule(config, total_steps)
    name = config.get("name", "adamw")
    if name == "adamw":
        optimizer = optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    elif name == "sgd":
        # Coupled L2 decay added to the gradient before momentum, as torch.optim.SGD does.
        optimizer = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
        )
    else:
        raise ValueError(f"unknown optimizer optim.name={name!r}; choose 'adamw' or 'sgd'")
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    groups = ParamGroups.from_config(config)
    if not groups:
        return optimizer
    # Frozen leaves bypass the optimizer, so they hold no moments and, like PyTorch parameters
    # with requires_grad=False, do not count in the clipping norm; the others share one
    # optimizer (one clipping norm, as torch.nn.utils.clip_grad_norm_ over all param groups)
    # whose updates are then scaled per group.
    return optax.multi_transform(
        {
            "trained": optax.chain(optimizer, groups.scale_updates()),
            "frozen": optax.set_to_zero(),
        },
        groups.labels,
    )
