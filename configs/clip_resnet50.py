"""CLIP with a convolutional image tower: torchvision's ResNet-50 (BatchNorm, synchronised
over the global batch) and CLIP's 12-layer text Transformer, trained with the paper's recipe
(the `clip_b16` config's optimizer, data and tokenizer) at batch 4,096.

    python train.py --config=configs/clip_resnet50.py --workdir=runs/clip_resnet50 \
        --config.data.builder_kwargs.path=/data/my_captions.csv

Any registry image model serves as the tower the same way:
`--config.model.image_tower=mobilenet_v3_large` (or `swin_t`, `vgg16_bn`, ...); its features
before the classifier are projected into the joint space.

`:smoke` shrinks it to a seconds-long CPU run on the built-in dataset, with a tiny
basic-block ResNet tower.
"""

from ml_collections import ConfigDict

from configs import clip_b16, clip_small


def get_config(arg: str | None = None) -> ConfigDict:
    config = clip_b16.get_config()
    config.batch_size = 4096
    config.model = dict(
        name="clip_resnet50", image_tower="resnet50", dtype="bfloat16", image={}, text={}
    )
    if arg == "smoke":
        small = clip_small.get_config("smoke")
        for key in ("batch_size", "total_steps", "log_every", "checkpoint_every", "data"):
            config[key] = small[key]
        config.tokenizer = small.tokenizer
        config.model.image = dict(block="basic", stage_sizes=(1, 1, 1, 1), width=8)
        config.model.text = small.model.text.to_dict()
        config.model.embed_dim = small.model.embed_dim
        config.optim.warmup_steps = 1
        config.eval = small.eval
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
