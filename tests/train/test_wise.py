"""WiSE-FT: weight-space interpolation of the zero-shot and fine-tuned models, on hand-worked
numbers and end to end through the trainer and `python -m jaxmm.evaluate`."""

import json

import numpy as np
import pytest
from flax import traverse_util

import jaxmm.train
from configs import clip_small
from jaxmm.evaluate.__main__ import evaluate
from jaxmm.train.pretrained import load_variables
from jaxmm.train.wise import interpolate, wise_alphas


def test_interpolation_on_hand_worked_numbers():
    zeroshot = {
        "params": {"w": np.array([0.0, 2.0, -4.0], np.float32)},
        "batch_stats": {"mean": np.array([1.0], np.float32), "count": np.array([3], np.int32)},
    }
    finetuned = {
        "params": {"w": np.array([4.0, 2.0, 0.0], np.float32)},
        "batch_stats": {"mean": np.array([3.0], np.float32), "count": np.array([7], np.int32)},
    }
    mixed = interpolate(zeroshot, finetuned, 0.25)  # 0.75 * zeroshot + 0.25 * finetuned
    np.testing.assert_array_equal(mixed["params"]["w"], [1.0, 2.0, -3.0])
    np.testing.assert_array_equal(mixed["batch_stats"]["mean"], [1.5])  # statistics mix too
    np.testing.assert_array_equal(mixed["batch_stats"]["count"], [7])  # not floating: tuned
    assert mixed["params"]["w"].dtype == np.float32


def test_mismatched_models_are_an_error_naming_the_paths():
    zeroshot = {"params": {"body": np.zeros(3), "fc": {"kernel": np.zeros((4, 10))}}}
    finetuned = {"params": {"body": np.zeros(3), "fc": {"kernel": np.zeros((4, 5))}, "x": 0.0}}
    with pytest.raises(ValueError, match=r"only in the fine-tuned model: params/x") as error:
        interpolate(zeroshot, finetuned, 0.5)
    assert "params/fc/kernel: zero-shot (4, 10), fine-tuned (4, 5)" in str(error.value)


def test_alphas_are_checked_before_any_work():
    config = clip_small.get_config("smoke")
    assert wise_alphas(config) == ()  # the default: the fine-tuned model only
    config.wise_alpha = (0.5,)
    with pytest.raises(ValueError, match="init_from is empty"):
        wise_alphas(config)
    config.init_from = "runs/x"
    config.wise_alpha = (0.0, 0.5, 1.0, 0.5)
    assert wise_alphas(config) == (0.0, 0.5)
    config.wise_alpha = (1.5,)
    with pytest.raises(ValueError, match=r"\[1.5\] not in \[0, 1\]"):
        wise_alphas(config)


def flat(tree) -> dict:
    return traverse_util.flatten_dict(dict(tree))


def test_wise_ft_end_to_end(tmp_path):
    config = clip_small.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    config.total_steps = 2
    zeroshot_run, finetuned_run = tmp_path / "zeroshot", tmp_path / "finetuned"
    zeroshot_metrics = jaxmm.train.run(config, zeroshot_run)

    config.init_from = str(zeroshot_run)
    config.seed, config.total_steps = 1, 3
    config.wise_alpha = (0.0, 0.5)
    final = jaxmm.train.run(config, finetuned_run)
    # alpha 0 IS the zero-shot model: its metrics, to the last digit.
    assert {k.removeprefix("wise0.0/"): v for k, v in final.items() if "wise0.0/" in k} == (
        zeroshot_metrics
    )
    assert set(final) == {f"{p}{k}" for p in ("", "wise0.0/", "wise0.5/") for k in zeroshot_metrics}
    assert json.loads((finetuned_run / "final_metrics.json").read_text()) == final
    lines = (finetuned_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[-1]["wise0.5/zeroshot/top1"] == final["wise0.5/zeroshot/top1"]

    # The interpolated weights are the hand mix of the two runs' checkpoints (every leaf).
    # A jaxmm run folder loads without a task (only PyTorch checkpoints need the model).
    zero, tuned = load_variables(str(zeroshot_run), None), load_variables(str(finetuned_run), None)
    mixed, zero, tuned = flat(interpolate(zero, tuned, 0.5)), flat(zero), flat(tuned)
    assert ("batch_stats",) not in {k[:1] for k in mixed}  # ViT CLIP: parameters only
    for path, value in mixed.items():
        hand = np.float32(0.5) * np.asarray(zero[path]) + np.float32(0.5) * np.asarray(tuned[path])
        np.testing.assert_array_equal(value, hand, err_msg="/".join(path))
    assert any(not np.array_equal(zero[p], tuned[p]) for p in zero)

    # `python -m jaxmm.evaluate --config.wise_alpha=0.5` on the run gives the trainer's numbers.
    config.wise_alpha = (0.5,)
    evaluated = evaluate(config, finetuned_run, out=tmp_path / "eval")
    assert evaluated == {k: v for k, v in final.items() if not k.startswith("wise0.0/")}
