"""ResNet-50 on ImageNet-1k with the standard SGD recipe (Goyal et al. 2017; torchvision's
reference recipe plus label smoothing): 90 epochs, batch 1024, learning rate 0.1 x batch/256
with 5 warmup epochs and cosine decay, Nesterov momentum 0.9, weight decay 1e-4 on conv and
linear kernels, label smoothing 0.1, random-resized crops (scale 0.08-1) and flips at 224 px,
evaluated on the central 87.5% crop. Expected: ~76-77% top-1 (torchvision's v1 weights reach
76.1% without smoothing); about 8 hours on 8 H100s is typical for this recipe.

    python train.py --config=configs/resnet50_imagenet.py --workdir=runs/resnet50_imagenet

Reads tfds `imagenet2012`, which must be prepared beforehand as array_record (ImageNet needs
a manual download: see the tfds catalogue). `--config.data.name=image_folder
--config.data.builder_kwargs.path=/data/my_images` trains on your own class folders instead.
Fine-tune from torchvision weights with `--config.init_from=resnet50-11ad3fa6.pth`.

The ViT, Swin, AlexNet and VGG ImageNet configs start from this one. `:smoke` runs the recipe
for seconds on the built-in dataset with a tiny model.
"""

from ml_collections import ConfigDict

from configs import resnet18_shapes
from jaxmm.data.image_ops import IMAGENET_MEAN, IMAGENET_STD

TRAIN_IMAGES = 1_281_167  # ImageNet-1k train split


def steps_for(epochs: float, batch_size: int) -> int:
    return round(epochs * TRAIN_IMAGES / batch_size)


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet18_shapes.get_config()
    config.batch_size = 1024
    config.total_steps = steps_for(90, config.batch_size)
    config.label_smoothing = 0.1
    config.data = dict(
        name="imagenet2012",
        builder_config="",
        builder_kwargs=dict(path=""),  # the folder, for data.name=image_folder
        data_dir="",
        train_split="train",
        label_key="label",
        image_size=224,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        eval_crop_fraction=0.875,  # resize 256, central crop 224
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_threads=16,
    )
    config.model = dict(name="resnet50", dtype="bfloat16")
    config.optim = dict(
        name="sgd",
        learning_rate=0.1 * config.batch_size / 256,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        warmup_steps=steps_for(5, config.batch_size),
        end_factor=0.0,
        grad_clip_norm=0.0,
        frozen=(),
    )
    config.log_every = 100
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.eval = dict(split="validation", batch_size=1024, every=steps_for(10, config.batch_size))
    return smoke_or_full(config, arg, "resnet_test")


def smoke_or_full(config: ConfigDict, arg: str | None, tiny_model: str) -> ConfigDict:
    """`config` itself, or with `arg == 'smoke'` a seconds-long run of it with `tiny_model`."""
    if arg == "smoke":
        resnet18_shapes.shrink_to_smoke(config, model=dict(name=tiny_model))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
