"""ViT-B/16 on ImageNet-1k with the DeiT recipe (Touvron et al. 2021, table 9, and the
defaults of its code): 300 epochs, batch 1024, AdamW (lr 5e-4 x batch/512, weight decay
0.05), 5 warmup epochs, cosine, label smoothing 0.1, stochastic depth 0.1, RandAugment
`rand-m9-mstd0.5-inc1`, MixUp 0.8 and CutMix 1.0 (one of the two per pair, even odds),
random erasing 0.25 with per-pixel noise, and repeated augmentation (each image 3 times
per batch). DeiT-B reaches 81.8% top-1 this way on ImageNet-1k alone. Where jaxmm differs:
MixUp/CutMix draw a weight per pair of neighbouring examples rather than one per batch
(see jaxmm/data/batch_augment.py), and repeated copies share a global batch rather than an
epoch; DeiT's 0.4 colour jitter is off, as timm drops it whenever RandAugment is on.

    python train.py --config=configs/vit_b16_imagenet.py --workdir=runs/vit_b16_imagenet

With timm weights (`--config.init_from=...safetensors`) it fine-tunes instead.
"""

from ml_collections import ConfigDict

from configs import resnet50_imagenet

# DeiT's data augmentation (main.py's defaults), shared with the Swin recipe.
DEIT_AUGMENTATION = dict(
    randaugment="rand-m9-mstd0.5-inc1",
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    mix_prob=1.0,
    mix_switch_prob=0.5,
    erase_prob=0.25,
    erase_mode="pixel",
    repeated_augmentations=3,
)


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet50_imagenet.get_config()
    config.total_steps = resnet50_imagenet.steps_for(300, config.batch_size)
    config.data.crop_scale = (0.08, 1.0)
    config.data.mean = (0.5, 0.5, 0.5)  # timm's ViT weights expect inputs scaled to [-1, 1]
    config.data.std = (0.5, 0.5, 0.5)
    config.data.update(DEIT_AUGMENTATION)
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
    config = resnet50_imagenet.smoke_or_full(config, arg, "vit_test")
    config.model.drop_path_rate = 0.1  # the smoke model keeps the recipe's stochastic depth
    return config
