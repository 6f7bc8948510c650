"""Visual question answering on the built-in `vqa_shapes` scenes with cross-attention fusion:
question tokens attend to image tokens.

    python train.py --config=configs/vqa_xattn.py --workdir=runs/vqa_xattn

The measured recipe starts the image tower from a run of the default job (README, "Visual
question answering"):

    python train.py --config=configs/clip_small.py --workdir=runs/clip_small
    python train.py --config=configs/vqa_xattn.py --workdir=runs/vqa_xattn \
        --config.init_from=runs/clip_small --config.init_towers='("image_tower",)'

Needs no download: the scenes (1-4 coloured shapes, 7 questions each: colour, shape, size,
position, existence, counting, relations) are generated on first use. Metrics:
`vqa/accuracy`, `vqa/accuracy_<type>` and `vqa/heldout_accuracy` (questions about
colour-shape pairs the train split never shows); see BENCHMARKS.md for measured numbers and
docs/vqa_dataset.md for the data. `configs/vqa_concat.py` and `configs/vqa_bilinear.py`
change only the fusion, so the three can be compared at equal cost.

`--config.init_from=RUN` starts the towers named by `init_towers` from a CLIP run with
the same tower shapes (with the text tower its tokenizer comes along; a ViT position grid
of another image size is resampled); `--config.optim.frozen='("image_tower",)'` keeps a
tower fixed. `--config=configs/vqa_xattn.py:smoke` is a seconds-long run for tests.
"""

from ml_collections import ConfigDict

import configs


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "vqa"
    # A CLIP run (or OpenAI weights tag) whose towers fit the model's; only they are loaded.
    config.init_from = ""
    # Which towers init_from loads. Without "text_tower" the run keeps its own tokenizer
    # (learnt from the questions) and a fresh text tower.
    config.init_towers = ("image_tower", "text_tower")
    config.wise_alpha = (1.0,)
    config.seed = 0
    # 64 images x 7 questions a step; 1,000 steps took 20.7 min on the 2-core CPU.
    config.batch_size = 64
    config.total_steps = 1000
    config.mesh = configs.MESH
    config.mesh_rules = configs.MESH_RULES
    config.distributed = configs.DISTRIBUTED

    config.data = dict(
        name="vqa_shapes",
        builder_config="default",
        # For data.name=vqa_file: the JSONL of {"image", "question", "answers"} lines.
        builder_kwargs=dict(path=""),
        data_dir="",  # empty: the tfds default, ~/tensorflow_datasets
        train_split="train",
        image_size=64,
        context_length=24,  # the longest built-in question is 20 tokens
        # No crop or flip: a crop can cut an object out of a counting question, and a flip
        # swaps left and right under a relation question's answer.
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip=False,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_threads=2,
        # Questions answered per image and step (the image encoded once): the built-in
        # scenes carry 7; an image with fewer gets empty ones that carry no loss.
        questions_per_image=7,
        # User data: the answer head's size, the most frequent normalised train answers.
        num_answers=1000,
    )
    config.tokenizer = dict(kind="bpe", vocab_size=1024, merges_path="", train_on_examples=5000)
    # clip_small's towers (a run of configs/clip_small.py loads into the image tower): 8 px
    # patches, 64 tokens at 64 px, given fixed 2D sine-cosine positions in the fusion (a
    # CLIP tower carries little position: BENCHMARKS.md). The question reads the image;
    # `co_attention=True` also lets the image read the question (about 1.5x the step time).
    config.model = dict(
        name="fusion_small", fusion="xattn", co_attention=False, image_positions="sincos"
    )
    config.optim = dict(
        name="adamw",
        learning_rate=1e-3,
        warmup_steps=100,
        end_factor=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.05,
        grad_clip_norm=1.0,
        frozen=(),
        lr_multipliers={},
    )
    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 2
    config.nonfinite = "stop"
    config.progress_bar = True
    config.eval = dict(split="test", batch_size=512, every=0)

    if arg == "smoke":
        shrink_to_smoke(config)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config


def shrink_to_smoke(config: ConfigDict) -> None:
    """A seconds-long CPU run on the smoke scenes with the tiny fusion model."""
    config.batch_size = 16
    config.total_steps = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.data.builder_config = "smoke"
    config.data.image_size = 32
    config.data.context_length = 16
    config.tokenizer.vocab_size = 600
    config.model = dict(name="fusion_test", fusion=config.model.fusion)
    config.optim.warmup_steps = 1
    config.eval.batch_size = 64
