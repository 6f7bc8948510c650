"""VGG-16 with BatchNorm on ImageNet-1k with torchvision's reference recipe (SGD lr 0.01,
momentum 0.9, weight decay 1e-4, batch 256, 90 epochs), cosine decay in place of its step
schedule. torchvision's `vgg16_bn` weights reach 73.4% top-1. `--config.model.name=vgg16`
(or any of vgg11..vgg19, with or without `_bn`) swaps the depth.

    python train.py --config=configs/vgg16_imagenet.py --workdir=runs/vgg16_imagenet
"""

from ml_collections import ConfigDict

from configs import alexnet_imagenet, resnet50_imagenet


def get_config(arg: str | None = None) -> ConfigDict:
    config = alexnet_imagenet.get_config()
    config.model = dict(name="vgg16_bn", dtype="bfloat16")
    return resnet50_imagenet.smoke_or_full(config, arg, "vgg_test")
