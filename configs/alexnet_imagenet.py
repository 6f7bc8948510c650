"""AlexNet on ImageNet-1k with torchvision's reference recipe (SGD lr 0.01, momentum 0.9,
weight decay 1e-4, batch 256, 90 epochs), cosine decay in place of its step schedule, no label
smoothing. torchvision's weights reach 56.5% top-1.

    python train.py --config=configs/alexnet_imagenet.py --workdir=runs/alexnet_imagenet
"""

from ml_collections import ConfigDict

from configs import resnet50_imagenet


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet50_imagenet.get_config()
    config.batch_size = 256
    config.total_steps = resnet50_imagenet.steps_for(90, config.batch_size)
    config.label_smoothing = 0.0
    config.model = dict(name="alexnet", dtype="bfloat16")
    config.optim.learning_rate = 0.01
    config.optim.nesterov = False
    config.optim.warmup_steps = 0
    config.eval.every = resnet50_imagenet.steps_for(10, config.batch_size)
    config = resnet50_imagenet.smoke_or_full(config, arg, "alexnet_test")
    if arg == "smoke":
        config.data.image_size = 64  # AlexNet's strided stem needs at least 63 px
    return config
