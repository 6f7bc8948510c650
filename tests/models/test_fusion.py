"""Fusion classifiers (`jaxmm.models.fusion`) on the tiny towers: shapes, jit, a gradient step,
padding invariance, co-attention, CLIP-compatible tower trees, CNN towers, the bilinear
equations written out in numpy, and the errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from configs import clip_small
from jaxmm.models import create_model
from jaxmm.models.fusion import BilinearFusion, FusionClassifier
from jaxmm.train.steps import inference_mode_where

EOT = 511  # the largest id of the tiny text tower's vocabulary
FUSIONS = {
    "concat": dict(fusion="concat"),
    "mlb": dict(fusion="bilinear"),
    "mfb": dict(fusion="bilinear", bilinear_factors=4),
    "xattn": dict(fusion="xattn"),  # the text's masked mean
    "xattn_co": dict(fusion="xattn", co_attention=True, text_pool="eot"),
}
# Further builds the tests share: `_built(name)` for any key of FUSIONS or OTHERS.
OTHERS = {
    # The CIFAR stem keeps a 4x4 map at 32 px: 16 tokens of 64 channels.
    "resnet_xattn": dict(image_tower="resnet_test", image=dict(stem="cifar")),
    "resnet_concat": dict(image_tower="resnet_test", fusion="concat", dropout=0.0),
}


def _inputs():
    """Two 32 px images and two questions, EOT at 10 and 6, zero padding to 16 tokens."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    tokens = np.zeros((2, 16), np.int32)
    for row, eot in enumerate((10, 6)):
        tokens[row, :eot] = rng.integers(1, 500, size=eot)
        tokens[row, eot] = EOT
    return images, tokens


def _random_variables(module: nn.Module, *inputs, **kwargs) -> dict:
    """Variables of `module` drawn in numpy from its abstract `init` (compiling `init` costs
    more than the model): kernels N(0, 1 / fan_in), LayerNorm scales 1 + N(0, 0.1^2), biases
    N(0, 0.1^2) so that zero-initialised ones take part, BatchNorm statistics (0, 1)."""
    init = functools.partial(module.init, **kwargs)  # keyword flags stay Python values
    shapes = nn.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), *inputs))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        collection, name = path[0].key, path[-1].key
        if collection == "batch_stats":
            return np.full(leaf.shape, 1.0 if name == "var" else 0.0, np.float32)
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if name == "scale":
            return 1 + 0.1 * noise
        if name == "bias":
            return 0.1 * noise
        return noise / np.sqrt(max(np.prod(leaf.shape[:-1]), 1))

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _built(name: str):
    """`(model, variables, jitted apply)` of `fusion_test` with the overrides `FUSIONS[name]`
    or `OTHERS[name]`, built once for all tests."""
    model = create_model("fusion_test", **{**FUSIONS, **OTHERS}[name])
    return (
        model,
        _random_variables(model, *_inputs()),
        jax.jit(model.apply, static_argnames="train"),
    )


@pytest.mark.parametrize("kind", FUSIONS)
def test_shapes_finite_and_jit_match_eager(kind):
    model, variables, apply = _built(kind)
    images, tokens = _inputs()
    eager = model.apply(variables, images, tokens)
    jitted = apply(variables, images, tokens)
    chex.assert_shape(eager, (2, 10))
    chex.assert_tree_all_finite(eager)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-5)
    assert not np.allclose(eager[0], eager[1], atol=1e-4)  # the two examples differ


# One of each fusion (MLB and plain xattn add no path a gradient takes that these do not).
@pytest.mark.parametrize("kind", ["concat", "mfb", "xattn_co"])
def test_one_gradient_step_reduces_the_loss(kind):
    """Plain SGD on a fixed batch: a small step along -grad lowers the cross-entropy. The
    towers stay frozen (as in LiT), except with concat, which trains end to end and shows the
    gradient reaching both towers (differentiating the towers for every fusion would double
    this file's compile time for no new path)."""
    model, variables, _ = _built(kind)
    images, tokens = _inputs()
    labels = jnp.array([3, 7])
    end_to_end = kind == "concat"
    params = variables["params"]
    trained = params if end_to_end else params[FUSIONS[kind]["fusion"]]

    @jax.jit
    def loss_and_grad(trained):
        def loss(trained):
            p = trained if end_to_end else {**params, FUSIONS[kind]["fusion"]: trained}
            logits = model.apply({**variables, "params": p}, images, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.value_and_grad(loss)(trained)

    before, grads = loss_and_grad(trained)
    after, _ = loss_and_grad(jax.tree.map(lambda p, g: p - 0.05 * g, trained, grads))
    assert after < before - 1e-4, (before, after)
    if end_to_end:
        for tower in ("image_tower", "text_tower"):
            assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[tower])) > 0, tower


@pytest.mark.parametrize("kind", FUSIONS)
def test_logits_ignore_everything_after_eot(kind):
    _, variables, apply = _built(kind)
    images, tokens = _inputs()
    base = apply(variables, images, tokens)
    # Ids written over the padding (below EOT's, so EOT stays the largest).
    scribbled = tokens.copy()
    scribbled[0, 11:] = np.arange(11, 16) * 7
    scribbled[1, 7:] = np.arange(7, 16) * 5
    chex.assert_trees_all_close(apply(variables, images, scribbled), base, atol=1e-5)
    if kind.startswith("xattn"):
        # Less padding: the same questions in 12 positions instead of 16 (concat and bilinear
        # read the causal tower's EOT features, which no later position reaches).
        chex.assert_trees_all_close(apply(variables, images, tokens[:, :12]), base, atol=1e-5)
    # A word of the question does change the answer.
    changed = tokens.copy()
    changed[1, 2] += 1
    assert not np.allclose(apply(variables, images, changed)[1], base[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["concat", "xattn_co"])
def test_several_questions_per_image_answer_as_one_each(kind):
    """`tokens` `[B, Q, L]`: the image is encoded once and each question answered as if it
    came alone with its image; a sequence-sensitive fusion (co-attention) shows the image
    features were repeated per question, not mixed across images."""
    _, variables, apply = _built(kind)
    images, tokens = _inputs()
    # Image 0 asks (q0, q1, q0 with one word changed); image 1 asks (q1, q0, q1).
    third = tokens[0].copy()
    third[3] += 1
    questions = np.stack([np.stack([tokens[0], tokens[1], third]), tokens[[1, 0, 1]]])
    logits = apply(variables, images, questions)
    chex.assert_shape(logits, (2, 3, 10))
    for q in range(3):
        alone = apply(variables, images, questions[:, q])
        chex.assert_trees_all_close(logits[:, q], alone, atol=1e-5)
    assert not np.allclose(logits[0, 0], logits[0, 2], atol=1e-4)


def test_sincos_image_positions_add_no_parameters_and_change_the_answer():
    none = create_model("fusion_test", image_positions="none")
    sincos = create_model("fusion_test", image_positions="sincos")
    images, tokens = _inputs()
    variables = _random_variables(none, images, tokens)
    shapes = jax.eval_shape(sincos.init, jax.random.PRNGKey(0), images, tokens)
    assert jax.tree.structure(nn.unbox(shapes)) == jax.tree.structure(variables)
    chex.assert_shape(sincos.apply(variables, images, tokens), (2, 10))
    assert not np.allclose(
        sincos.apply(variables, images, tokens), none.apply(variables, images, tokens), atol=1e-4
    )
    with pytest.raises(ValueError, match="image_positions must be one of"):
        create_model("fusion_test", image_positions="sine")


def test_co_attention_adds_an_image_stream():
    plain, co = _built("xattn")[1], _built("xattn_co")[1]
    plain, co = plain["params"]["xattn"], co["params"]["xattn"]
    image_only = {"image_block_0", "image_final_norm"}
    assert image_only.isdisjoint(plain)
    assert image_only <= set(co)
    assert set(co) - set(plain) == image_only
    # The image stream's pooled tokens join the text's before the MLP: [B, W] -> [B, 2W].
    width = 32
    assert plain["mlp"]["fc"]["kernel"].shape == (width, width)
    assert co["mlp"]["fc"]["kernel"].shape == (2 * width, width)
    # The image block's cross-attention reads the text's width (keys and values from text).
    assert co["image_block_0"]["cross_attn"]["kv"]["kernel"].shape == (width, 2, 2, width // 2)


def _tower_record(model, *inputs) -> dict[str, tuple]:
    """`{'collection/tower/path': (shape, dtype, logical names)}` of the towers' variables."""
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)
    names = nn.get_partition_spec(variables)
    flat = traverse_util.flatten_dict(nn.unbox(variables), sep="/")
    flat_names = traverse_util.flatten_dict(names, sep="/")
    return {
        path: (leaf.shape, leaf.dtype, tuple(flat_names[path]))
        for path, leaf in flat.items()
        if path.split("/")[1] in ("image_tower", "text_tower")
    }


def _clip_small_model():
    model = clip_small.get_config().model.to_dict()
    return model.pop("name"), model


TOWER_PAIRS = {
    # (fusion name, its overrides, CLIP name, its overrides, image size, text length)
    "test_xattn": ("fusion_test", {}, "clip_test", {}, 32, 16),
    "test_concat": ("fusion_test", dict(fusion="concat"), "clip_test", {}, 32, 16),
    "test_resnet": (
        "fusion_test",
        dict(image_tower="resnet_test"),
        "clip_test",
        dict(image_tower="resnet_test"),
        32,
        16,
    ),
    "small": ("fusion_small", {}, *_clip_small_model(), 32, 32),
    "clip_vit_b32": ("fusion_clip_vit_b32", {}, "clip_vit_b32", {}, 224, 77),
}


@pytest.mark.parametrize("pair", TOWER_PAIRS)
def test_tower_variables_match_clip(pair):
    """The towers' paths, shapes, dtypes and sharding names are CLIP's, so the trainer can
    copy a CLIP run's (or converted OpenAI) `image_tower`/`text_tower` into them."""
    fusion_name, fusion_overrides, clip_name, clip_overrides, size, length = TOWER_PAIRS[pair]
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((2, length), jnp.int32)
    fusion = _tower_record(create_model(fusion_name, **fusion_overrides), images, tokens)
    clip = _tower_record(create_model(clip_name, **clip_overrides), images, tokens)
    assert {p.split("/")[1] for p in fusion} == {"image_tower", "text_tower"}
    assert fusion == clip


def test_resnet_tower_gives_tokens_to_xattn_and_pooled_features_to_concat():
    images, tokens = _inputs()
    model, variables, apply = _built("resnet_xattn")
    assert model.image_tower.output_tokens
    logits = apply(variables, images, tokens)
    chex.assert_shape(logits, (2, 10))
    chex.assert_tree_all_finite(logits)
    # A CNN's tokens carry no position of their own: the fusion adds a learned one.
    chex.assert_shape(variables["params"]["xattn"]["image_pos_embed"], (1, 16, 32))
    assert "image_pos_embed" not in _built("xattn")[1]["params"]["xattn"]

    model, variables, _ = _built("resnet_concat")
    assert not model.image_tower.output_tokens
    chex.assert_shape(variables["params"]["concat"]["image_proj"]["kernel"], (64, 32))
    apply = jax.jit(lambda v: model.apply(v, images, tokens, train=True, mutable=["batch_stats"]))
    logits, updated = apply(variables)
    chex.assert_shape(logits, (2, 10))
    # `train` reaches the tower: its BatchNorm statistics move in train mode...
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), updated["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))

    # ...and the trainer's interception of a frozen tower keeps them.
    @jax.jit
    def frozen_image_tower(variables):
        with inference_mode_where(lambda path: path[:1] == ("image_tower",)):
            return model.apply(variables, images, tokens, train=True, mutable=["batch_stats"])

    _, kept = frozen_image_tower(variables)
    chex.assert_trees_all_equal(kept, {"batch_stats": variables["batch_stats"]})


def test_dropout_acts_in_train_mode_only():
    model, variables, apply = _built("concat")
    assert model.dropout > 0
    images, tokens = _inputs()
    evaluated = apply(variables, images, tokens)
    chex.assert_trees_all_equal(apply(variables, images, tokens, train=False), evaluated)
    trained = apply(variables, images, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(trained, evaluated, atol=1e-4)


def test_xattn_names_an_image_tower_without_tokens():
    with pytest.raises(ValueError, match="mobilenet_v2_test.*MobileNetV2 cannot return them"):
        create_model("fusion_test", image_tower="mobilenet_v2_test")
    # Pooled features are all concat needs.
    model = create_model("fusion_test", image_tower="mobilenet_v2_test", fusion="concat")
    images, tokens = _inputs()
    logits = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), images, tokens)[0]
    chex.assert_shape(logits, (2, 10))


def test_bad_fusion_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"fusion must be one of .*'concat'.* got 'sum'"):
        create_model("fusion_test", fusion="sum")
    with pytest.raises(ValueError, match="text_pool must be one of .* got 'cls'"):
        create_model("fusion_test", text_pool="cls")
    with pytest.raises(TypeError, match="co_atention"):
        create_model("fusion_test", co_atention=True)
    # Built by hand with a pooled tower, xattn says which tower needs tokens.
    vit = create_model("vit_test", num_classes=0)
    text = create_model("text_transformer_test", output_tokens=True)
    with pytest.raises(ValueError, match="image tower VisionTransformer with output_tokens=True"):
        FusionClassifier(vit, text, fusion="xattn")
    with pytest.raises(ValueError, match="build the text tower TextTransformer with output"):
        FusionClassifier(vit, text, fusion="concat")


@pytest.mark.parametrize("factors", [1, 3])
def test_bilinear_pooling_matches_the_papers(factors):
    """MLB: P^T (tanh(U^T x + a) * tanh(V^T y + b)) + c; MFB: sum pool the k factors of
    (U^T x + a) * (V^T y + b), signed square root, L2 normalise, then the classifier.
    Written out in float64 numpy."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 6)).astype(np.float32)
    text = rng.normal(size=(3, 5)).astype(np.float32)
    module = BilinearFusion(rank=4, num_classes=7, factors=factors)
    params = _random_variables(module, image, text, train=False)["params"]
    got = module.apply({"params": params}, image, text, train=False)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    u = image @ p["image_proj"]["kernel"] + p["image_proj"]["bias"]  # [B, r k]
    v = text @ p["text_proj"]["kernel"] + p["text_proj"]["bias"]
    if factors == 1:
        joint = np.tanh(u) * np.tanh(v)  # [B, r]
    else:
        z = (u * v).reshape(3, 4, factors).sum(-1)  # [B, o]
        z = np.sign(z) * np.sqrt(np.abs(z))
        joint = z / np.linalg.norm(z, axis=-1, keepdims=True)
    want = joint @ p["classifier"]["kernel"] + p["classifier"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["concat", "mlb", "xattn_co"])
def test_new_parameters_carry_logical_axis_names(kind):
    model = create_model("fusion_test", image_tower="resnet_test", **FUSIONS[kind])
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *_inputs())
    own = {k: v for k, v in variables["params"].items() if k not in ("image_tower", "text_tower")}
    leaves = jax.tree.leaves(own, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == leaf.value.ndim, leaf


@pytest.mark.parametrize("fusion, ignored", [("image_only", "tokens"), ("text_only", "images")])
def test_single_modality_baselines_ignore_the_other_input(fusion, ignored):
    model = create_model("fusion_test", fusion=fusion)
    images, tokens = _inputs()
    variables = _random_variables(model, images, tokens)
    other_images = images[::-1] + 1.0
    other_tokens = np.where(tokens > 0, (tokens * 7) % 500 + 1, 0).astype(np.int32)
    other_tokens[tokens == EOT] = EOT
    base = model.apply(variables, images, tokens)
    same = dict(tokens=(images, other_tokens), images=(other_images, tokens))[ignored]
    changed = dict(tokens=(other_images, tokens), images=(images, other_tokens))[ignored]
    np.testing.assert_array_equal(model.apply(variables, *same), base)
    assert not np.allclose(model.apply(variables, *changed), base)
