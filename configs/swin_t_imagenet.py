"""Swin-T on ImageNet-1k with the Swin paper's recipe (Liu et al. 2021, appendix A2.1, and
the defaults of its code): 300 epochs, batch 1024, AdamW (lr 1e-3, weight decay 0.05, eps
1e-8), 20 warmup epochs, cosine, gradient clipping at 5, label smoothing 0.1, stochastic
depth 0.2, and DeiT's augmentation without repeated augmentation: RandAugment
`rand-m9-mstd0.5-inc1`, MixUp 0.8 / CutMix 1.0, random erasing 0.25. The paper reaches
81.3% top-1. MixUp/CutMix draw a weight per pair of examples rather than per batch (see
jaxmm/data/batch_augment.py); its 0.4 colour jitter is off, as timm drops it whenever
RandAugment is on.

    python train.py --config=configs/swin_t_imagenet.py --workdir=runs/swin_t_imagenet
"""

from ml_collections import ConfigDict

from configs import resnet50_imagenet
from configs.vit_b16_imagenet import DEIT_AUGMENTATION


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet50_imagenet.get_config()
    config.total_steps = resnet50_imagenet.steps_for(300, config.batch_size)
    # Swin's code turns DeiT's repeated augmentation off.
    config.data.update({**DEIT_AUGMENTATION, "repeated_augmentations": 1})
    config.model = dict(name="swin_t", dtype="bfloat16", drop_path_rate=0.2)
    config.optim = dict(
        name="adamw",
        learning_rate=1e-3,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.05,
        warmup_steps=resnet50_imagenet.steps_for(20, config.batch_size),
        end_factor=0.0,
        grad_clip_norm=5.0,
        frozen=(),
    )
    return resnet50_imagenet.smoke_or_full(config, arg, "swin_test")
