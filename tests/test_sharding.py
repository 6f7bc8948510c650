"""Logical-axis rules from the config (`mesh_rules`) and mesh construction errors."""

import jax
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxmm import sharding
from jaxmm.models import create_model
from jaxmm.train.state import create_train_state
from tests.models.tiny_inputs import tiny_inputs


def test_overrides_replace_only_the_named_rules():
    rules = dict(sharding.logical_rules((("embed", None), ("mlp", ["model", "fsdp"]))))
    assert rules["embed"] is None
    assert rules["mlp"] == ("model", "fsdp")
    assert {k: v for k, v in rules.items() if k not in ("embed", "mlp")} == {
        k: v for k, v in sharding.DEFAULT_RULES if k not in ("embed", "mlp")
    }


@pytest.mark.parametrize(
    "overrides, culprit", [((("embd", None),), "'embd'"), ((("embed", "tensor"),), "'tensor'")]
)
def test_unknown_names_are_errors_naming_them(overrides, culprit):
    with pytest.raises(ValueError, match=culprit):
        sharding.logical_rules(overrides)


def test_mesh_larger_than_the_devices_is_an_error():
    with pytest.raises(ValueError, match="needs 16 devices but 8 are available"):
        sharding.make_mesh({"data": 2, "fsdp": 8})


@pytest.mark.parametrize(
    "overrides, expected",
    [((), PartitionSpec("fsdp", "model")), ((("embed", None),), PartitionSpec(None, "model"))],
)
def test_rules_decide_where_the_state_lives(overrides, expected):
    model = create_model("vit_test")
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    _, shardings = create_train_state(
        lambda rng: model.init(rng, *tiny_inputs("vit_test")),
        optax.adamw(1e-3),
        mesh,
        seed=0,
        rules=sharding.logical_rules(overrides),
    )
    fc1 = shardings.params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]  # [embed, mlp]
    assert fc1.spec == expected
    assert shardings.opt_state[0].mu["encoder"]["block_0"]["mlp"]["fc1"]["kernel"].spec == expected
    assert jax.tree.leaves(shardings)[0].mesh == mesh
