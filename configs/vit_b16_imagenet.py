"""ViT-B/16 on ImageNet-1k with the DeiT recipe (Touvron et al. 2021, table 9) minus its
RandAugment, mixup/cutmix, random erasing and stochastic depth, which jaxmm's ViT and input
pipeline do not have yet: 300 epochs, batch 1024, AdamW (lr 5e-4 x batch/512, weight decay
0.05), 5 warmup epochs, cosine, label smoothing 0.1. DeiT's ablations show ViT-B trained on
ImageNet-1k alone overfits badly without that augmentation, so treat this config as the
fine-tuning recipe for timm weights (`--config.init_from=...safetensors`) until they land.

    python train.py --config=configs/vit_b16_imagenet.py --workdir=runs/vit_b16_imagenet
"""

from ml_collections import ConfigDict

from configs import resnet50_imagenet


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet50_imagenet.get_config()
    config.total_steps = resnet50_imagenet.steps_for(300, config.batch_size)
    config.data.crop_scale = (0.08, 1.0)
    config.data.mean = (0.5, 0.5, 0.5)  # timm's ViT weights expect inputs scaled to [-1, 1]
    config.data.std = (0.5, 0.5, 0.5)
    config.model = dict(name="vit_b16", dtype="bfloat16")
    config.optim = dict(
        name="adamw",
        learning_rate=5e-4 * config.batch_size / 512,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.05,
        warmup_steps=resnet50_imagenet.steps_for(5, config.batch_size),
        end_factor=0.0,
        grad_clip_norm=0.0,
        frozen=(),
    )
    return resnet50_imagenet.smoke_or_full(config, arg, "vit_test")
