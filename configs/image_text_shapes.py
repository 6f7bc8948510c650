"""Image + text classification on the built-in `mm_shapes` data: a product photo (one
shape) with its description (the material, never the shape), 24 classes = 6 shapes x 4
materials, so neither the image nor the text alone can name the class.

    python train.py --config=configs/image_text_shapes.py --workdir=runs/image_text

Needs no download. `model.fusion` picks how the two meet: `concat` (default), `bilinear`,
`xattn`, or the single-modality baselines `image_only` (at most 1/4 on the balanced test
split) and `text_only` (at most 1/6). Metrics are classification's: `eval/top1`,
`eval/seen_top1` and `eval/heldout_top1` (4 shape-material pairs never seen in training).
docs/mm_shapes.md describes the data; BENCHMARKS.md has the measured table.

For your own data (`data.name=image_text_label_file`): a CSV with columns image,text,label
(or a JSONL of such objects), `--config.data.builder_kwargs.path=items.csv`.
`--config=configs/image_text_shapes.py:smoke` is a seconds-long run for tests.
"""

from ml_collections import ConfigDict

from configs import vqa_xattn


def get_config(arg: str | None = None) -> ConfigDict:
    # The VQA recipe (same towers, optimizer and no-flip augmentation) on other data.
    config = vqa_xattn.get_config(arg)
    config.task = "image_text_classification"
    config.label_smoothing = 0.0
    config.data.name = "mm_shapes"
    config.data.label_key = "label"
    del config.data["num_answers"], config.data["questions_per_image"]
    config.tokenizer.train_on_examples = 20_000  # one text per example, not seven
    config.model.fusion = "concat"
    config.model.image_positions = None  # measured with the ViT tower's own positions only
    if arg == "smoke":
        config.data.context_length = 16
        return config
    config.total_steps = 1500
    config.batch_size = 128
    config.optim.warmup_steps = 200
    config.data.image_size = 32
    config.data.context_length = 32
    config.model.image = dict(patch_size=8)  # clip_small's tower: a CLIP run's weights load
    return config
