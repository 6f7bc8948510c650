"""MobileNet v2 (torchvision architecture) on CIFAR-10 with the ResNet-18 CIFAR recipe but
weight decay 4e-5 (the MobileNet v2 paper's) and 96 px inputs: torchvision's network
downsamples 32x, so native 32 px images would end at 1x1 after the fourth stage.

    python train.py --config=configs/mobilenet_v2_cifar10.py --workdir=runs/mobilenet_v2_cifar10
"""

from ml_collections import ConfigDict

from configs import resnet18_cifar10, resnet18_shapes


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet18_cifar10.get_config()
    config.data.image_size = 96
    config.model = dict(name="mobilenet_v2")
    config.optim.weight_decay = 4e-5
    if arg == "smoke":
        resnet18_shapes.shrink_to_smoke(config, model=dict(name="mobilenet_v2_test"))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
