"""ResNet-18 (CIFAR stem, half width) classifying the built-in `clip_shapes` images: the
classification counterpart of the default CLIP job, on CPU in minutes.

    python train.py --config=configs/resnet18_shapes.py --workdir=runs/resnet18_shapes

Needs no download. The 48 classes are colour x shape; 8 of them never appear in the train
split (they exist for CLIP's zero-shot test), so the evaluation reports `eval/seen_top1` on
the 40 trained classes and `eval/heldout_top1`, which a closed-set classifier cannot get
right (0 by construction); `eval/top1` mixes both. See BENCHMARKS.md for measured numbers.

`--config=configs/resnet18_shapes.py:smoke` shrinks it to a seconds-long run (tests use it);
the other classification configs reuse that smoke setting.
"""

from ml_collections import ConfigDict

import configs


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "classification"
    # A PyTorch checkpoint (.pth/.safetensors, torchvision/timm layout) or a jaxmm run folder;
    # the classifier head is re-initialised when the class count differs.
    config.init_from = ""
    config.seed = 0
    config.batch_size = 128
    config.total_steps = 400
    config.mesh = configs.MESH
    config.mesh_rules = configs.MESH_RULES
    config.distributed = configs.DISTRIBUTED
    config.label_smoothing = 0.0
    # The loss for class imbalance (jaxmm/train/classification_losses.py): name is one of
    # softmax_ce, focal, sigmoid_focal, class_balanced (weighs `base`), logit_adjusted.
    config.classification_loss = dict(
        name="softmax_ce", base="softmax_ce", gamma=2.0, alpha=0.25, beta=0.9999, tau=1.0
    )
    # WiSE-FT (jaxmm/train/wise.py): with init_from, also evaluate (1 - a) * start + a * tuned.
    config.wise_alpha = (1.0,)

    # Knowledge distillation (jaxmm/train/distillation.py), off while teacher is "": the
    # teacher's weights (a jaxmm run folder, a PyTorch checkpoint or a MODEL@TAG weights tag),
    # its model section (name "": the run folder's own, or the tag's model), the distillation
    # term's share of the loss and its softmax temperature.
    config.distill = dict(teacher="", teacher_model=dict(name=""), weight=0.5, temperature=4.0)

    config.data = dict(
        name="clip_shapes",
        builder_config="default",
        # For data.name=image_folder: the folder of class folders (see README, "Your own data").
        builder_kwargs=dict(path=""),
        data_dir="",  # empty: the tfds default, ~/tensorflow_datasets
        train_split="train",
        label_key="label",
        # How often each class is drawn (jaxmm/data/sampling.py): uniform (every example once
        # an epoch), sqrt or class_balanced (with replacement, by data.label_key).
        sampling="uniform",
        image_size=32,
        crop_scale=(0.7, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        eval_crop_fraction=1.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_threads=2,
        # Per-example augmentation (jaxmm/data/augment.py), all off: crop_padding > 0 pads and
        # crops at random instead of the resized crop; color_jitter = (brightness, contrast,
        # saturation, hue) strengths; randaugment a timm spec such as "rand-m9-mstd0.5";
        # random erasing with erase_mode "pixel", "rand" or "const".
        crop_padding=0,
        color_jitter=(0.0, 0.0, 0.0, 0.0),
        color_jitter_random_order=False,
        randaugment="",
        erase_prob=0.0,
        erase_mode="pixel",
        # Batch augmentation (jaxmm/data/batch_augment.py), off: MixUp/CutMix Beta alphas, the
        # probability of mixing a pair and of CutMix when both are on; repeated_augmentations
        # copies of each image per batch (DeiT uses 3).
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        mix_prob=1.0,
        mix_switch_prob=0.5,
        repeated_augmentations=1,
    )
    config.model = dict(name="resnet18", width=16, stem="cifar")
    config.optim = dict(
        name="sgd",
        learning_rate=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        warmup_steps=50,
        end_factor=0.0,
        grad_clip_norm=0.0,
        frozen=(),
        lr_multipliers={},  # parameter-path prefix -> multiplier, e.g. {"head": 10.0}
    )
    config.log_every = 20
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    # A step whose loss, gradients or updated parameters are not all finite is never applied;
    # "stop" then raises an error naming them, "skip" goes on (counted in train/skipped_steps).
    config.nonfinite = "stop"
    config.progress_bar = True
    config.eval = dict(split="test", batch_size=512, every=0)

    if arg == "smoke":
        shrink_to_smoke(config, model=dict(name="resnet_test", stem="cifar"))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config


def shrink_to_smoke(config: ConfigDict, model: dict) -> None:
    """A seconds-long CPU run of `config` on the built-in dataset with a tiny `model`.

    Keeps the recipe (optimizer, loss, augmentation); swaps the data for `clip_shapes`'
    smoke split and the model for a registry `*_test` variant.
    """
    config.batch_size = 16
    config.total_steps = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.data.name = "clip_shapes"
    config.data.builder_config = "smoke"
    config.data.builder_kwargs = dict(path="")
    config.data.train_split = "train"
    config.data.label_key = "label"
    config.data.image_size = 32
    config.data.num_threads = 2
    config.model = model
    config.optim.warmup_steps = 1
    config.eval = dict(split="test", batch_size=64, every=0)
