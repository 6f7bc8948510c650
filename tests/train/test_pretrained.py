"""`init_from`: PyTorch checkpoints and jaxmm runs as starting points, with a fresh head."""

import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn
from flax import traverse_util

import jaxmm.train
from configs import resnet18_shapes
from jaxmm.models import create_model
from jaxmm.train.pretrained import load_pretrained

torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision")

from jaxmm.convert import from_torch  # noqa: E402
from tests.parity.reference import randomise_  # noqa: E402


def make_task(name: str, **overrides) -> types.SimpleNamespace:
    """The parts of a trainer task that `load_pretrained` reads."""
    model = create_model(name, **overrides)
    images = np.zeros((1, 32, 32, 3), np.float32)
    return types.SimpleNamespace(
        model=model, model_name=name, model_overrides=overrides, init_inputs=lambda: (images,)
    )


def init_variables(task) -> dict:
    return nn.unbox(task.model.init(jax.random.PRNGKey(0), *task.init_inputs()))


def flat(tree) -> dict:
    return traverse_util.flatten_dict(dict(tree))


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise_(torchvision.models.resnet18(num_classes=1000))
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_torch_checkpoint_with_other_classes_keeps_a_fresh_head(torchvision_resnet18):
    path, state_dict = torchvision_resnet18
    task = make_task("resnet18", num_classes=48)
    fresh = init_variables(task)
    loaded = flat(load_pretrained(str(path), task, fresh))
    converted = flat(from_torch("resnet18", state_dict))
    fresh = flat(fresh)
    assert set(loaded) == set(fresh)
    for key, value in loaded.items():
        if key[:2] == ("params", "fc"):
            np.testing.assert_array_equal(value, fresh[key])  # new 48-way head
        else:
            np.testing.assert_array_equal(value, converted[key])
    assert loaded[("params", "fc", "kernel")].shape == (512, 48)


def test_torch_checkpoint_with_the_same_classes_loads_the_head_too(torchvision_resnet18):
    path, state_dict = torchvision_resnet18
    task = make_task("resnet18", num_classes=1000)
    loaded = flat(load_pretrained(str(path), task, init_variables(task)))
    expected = state_dict["fc.weight"].numpy().T
    np.testing.assert_array_equal(loaded[("params", "fc", "kernel")], expected)


def test_a_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    vgg = torchvision.models.vgg11(num_classes=10)
    path = tmp_path / "vgg11.pth"
    torch.save(vgg.state_dict(), path)
    task = make_task("resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"vgg11\.pth[\s\S]*missing keys"):
        load_pretrained(str(path), task, init_variables(task))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(str(tmp_path / "nope.pth"), task, init_variables(task))


def test_a_jaxmm_run_is_a_starting_point(tmp_path):
    config = resnet18_shapes.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    jaxmm.train.run(config, tmp_path / "first")
    manager = ocp.CheckpointManager(tmp_path / "first" / "checkpoints")
    state = manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()

    # Same 48 classes: everything, BatchNorm statistics included, comes from the run.
    task = make_task("resnet_test", stem="cifar", num_classes=48)
    loaded = flat(load_pretrained(str(tmp_path / "first"), task, init_variables(task)))
    expected = flat({"params": state["params"], **state["model_state"]})
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value)

    # Another class count: a fresh head on the trained body.
    task = make_task("resnet_test", stem="cifar", num_classes=5)
    loaded = flat(load_pretrained(str(tmp_path / "first"), task, init_variables(task)))
    assert loaded[("params", "fc", "kernel")].shape == (64, 5)
    key = ("params", "conv1", "kernel")
    np.testing.assert_array_equal(loaded[key], expected[key])


def test_the_trainer_starts_from_a_torchvision_checkpoint(tmp_path, torchvision_resnet18):
    path, _ = torchvision_resnet18
    config = resnet18_shapes.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    config.total_steps = 2
    config.model = dict(name="resnet18")
    config.init_from = str(path)
    metrics = jaxmm.train.run(config, tmp_path / "finetune")
    assert 0 <= metrics["eval/top1"] <= 1
    # A typo'd path fails before any training, naming the file.
    config.init_from = str(tmp_path / "resnet81.pth")
    with pytest.raises(FileNotFoundError, match="resnet81.pth"):
        jaxmm.train.run(config, tmp_path / "typo")


def test_a_run_with_per_layer_blocks_starts_a_scanned_model(tmp_path):
    """`init_from` a run saved with per-layer blocks into `scan_layers=True`: stacked."""
    plain = make_task("vit_test")
    saved = init_variables(plain)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "step" / "state").absolute(), {"params": saved["params"]})
    checkpointer.wait_until_finished()

    scanned = make_task("vit_test", scan_layers=True)
    loaded = load_pretrained(str(tmp_path / "step"), scanned, init_variables(scanned))
    stacked = loaded["params"]["encoder"]["blocks"]["attn"]["qkv"]["kernel"]
    for layer in range(scanned.model.depth):
        per_layer = saved["params"]["encoder"][f"block_{layer}"]["attn"]["qkv"]["kernel"]
        np.testing.assert_array_equal(stacked[layer], per_layer)
