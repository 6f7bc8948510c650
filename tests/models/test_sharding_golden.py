"""Golden partition specs: how every parameter of every tiny model lands on an 8-device mesh.

A sharding change (a renamed logical axis, a new parameter without annotations, an edited
rule) changes memory use and communication on a pod without failing any numerical test.
This test records every parameter's `PartitionSpec` on a (data=2, fsdp=2, model=2) mesh
under the default rules, for the parameters and the AdamW moments, and fails on any
difference. After an intended change, regenerate the record and review its diff:

    JAXMM_UPDATE_GOLDEN=1 python -m pytest tests/models/test_sharding_golden.py
"""

import json
import os
import pathlib

import jax
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from jaxmm import sharding
from jaxmm.models import create_model, list_models
from tests.models.tiny_inputs import tiny_inputs

GOLDEN = pathlib.Path(__file__).parent / "golden_partition_specs.json"
TINY = [name for name in list_models() if name.endswith("_test")]
# Transformers whose every matrix FSDP must split, and whose attention and MLP weights
# tensor parallelism must split.
TRANSFORMERS = ("vit_test", "text_transformer_test", "clip_test", "swin_test")


def _spec_strings(tree) -> dict[str, str]:
    flat = traverse_util.flatten_dict(nn.get_partition_spec(tree), sep="/")
    return {path: str(tuple(spec)) for path, spec in flat.items()}


def _partition_specs(name: str) -> dict[str, str]:
    """`{'params/...': spec, 'opt_state/mu/...': spec}` for the model's abstract train state."""
    model = create_model(name)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *tiny_inputs(name)))
    params = variables["params"]
    mu = jax.eval_shape(optax.adamw(1e-3).init, params)[0].mu
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    shardings = sharding.logical_sharding({"params": params, "adam_mu": mu}, mesh)
    return {
        path: str(tuple(s.spec))
        for path, s in traverse_util.flatten_dict(shardings, sep="/").items()
    }


@pytest.fixture(scope="module")
def current() -> dict[str, dict[str, str]]:
    return {name: _partition_specs(name) for name in TINY}


def test_partition_specs_match_the_record(current):
    if os.environ.get("JAXMM_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(current) == sorted(golden), "tiny models added or removed: regenerate"
    for name in TINY:
        changed = {
            path: (golden[name].get(path), spec)
            for path, spec in current[name].items()
            if golden[name].get(path) != spec
        }
        removed = sorted(set(golden[name]) - set(current[name]))
        assert not changed and not removed, f"{name}: (recorded, now) {changed}; gone {removed}"


def test_optimizer_moments_are_sharded_like_their_parameters(current):
    for name in TINY:
        specs = current[name]
        for path, spec in specs.items():
            if path.startswith("params/"):
                assert specs["adam_mu/" + path.removeprefix("params/")] == spec, (name, path)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformers_are_fully_sharded(current, name):
    specs = {p: s for p, s in current[name].items() if p.startswith("params/")}
    model = create_model(name)
    shapes = traverse_util.flatten_dict(
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *tiny_inputs(name)))["params"],
        sep="/",
    )
    # Weight matrices and embedding tables; biases (qkv's is [3, heads, head_dim], Swin's
    # relative-position table [positions, heads]) are small and split over heads only.
    matrices = [
        path
        for path, leaf in shapes.items()
        if len(nn.unbox(leaf).shape) >= 2 and "bias" not in path.rsplit("/", 1)[-1]
    ]
    unsharded = [p for p in matrices if "fsdp" not in specs["params/" + p]]
    assert not unsharded, f"{name}: FSDP leaves these matrices whole: {unsharded}"
    blocks = [p for p in matrices if "/mlp/" in p.lower() or "attn" in p.lower()]
    assert blocks, f"{name}: no attention/MLP weights found"
    no_tensor_parallel = [p for p in blocks if "model" not in specs["params/" + p]]
    assert not no_tensor_parallel, f"{name}: model axis unused by {no_tensor_parallel}"
