"""ResNet-18 (CIFAR stem: 3x3 stride-1 conv, no max pool) on CIFAR-10, the common recipe:
200 epochs at batch 128, SGD (lr 0.1, Nesterov momentum 0.9, weight decay 5e-4), cosine
decay, random crops (scale 0.6-1, a close stand-in for pad-4-and-crop) and flips. Reaches
about 95% test accuracy in the literature with this recipe.

    python train.py --config=configs/resnet18_cifar10.py --workdir=runs/resnet18_cifar10

Reads tfds `cifar10` (prepared as array_record; `tfds build cifar10 --file_format=array_record`
or the first run prepares it when the machine can download).
"""

from ml_collections import ConfigDict

from configs import resnet18_shapes

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TRAIN_IMAGES = 50_000


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet18_shapes.get_config()
    config.batch_size = 128
    config.total_steps = round(200 * TRAIN_IMAGES / config.batch_size)
    config.data.name = "cifar10"
    config.data.builder_config = ""
    config.data.crop_scale = (0.6, 1.0)
    config.data.mean = CIFAR10_MEAN
    config.data.std = CIFAR10_STD
    config.data.num_threads = 8
    config.model = dict(name="resnet18", stem="cifar")
    config.optim.warmup_steps = 400
    config.log_every = 100
    config.checkpoint_every = 5000
    config.eval = dict(split="test", batch_size=1000, every=round(20 * TRAIN_IMAGES / 128))
    if arg == "smoke":
        resnet18_shapes.shrink_to_smoke(config, model=dict(name="resnet_test", stem="cifar"))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
