"""COCO captioning with OpenAI's CLIP ViT-B/32 image tower, for accelerators.

    python train.py --config=configs/caption_coco.py --workdir=runs/caption_coco \
        --config.data.builder_kwargs.path=/data/coco

`path` is COCO's folder as downloaded (`annotations/captions_{train,val}2017.json`,
`train2017/`, `val2017/`; val2017 is the validation split), read by the `coco_caption_files`
builder (converted once to array_record under `data_dir`). The image tower starts from
OpenAI's CLIP ViT-B/32 (`init_from=clip_vit_b32@openai`, downloaded once; only the
`image_tower` subtree is loaded) and learns at a tenth of the rate; the 6-layer, 512-wide
decoder over OpenAI's BPE vocabulary starts fresh. AdamW, label smoothing 0.1, 224 px,
bf16 compute, batch 256 for 20 epochs of the 118k training images (each step draws one of
an image's five captions). Evaluation generates captions for val2017's 5,000 images with beam
search (3 beams, GNMT length penalty 0.6) and reports BLEU-1..4, ROUGE-L and CIDEr-D as the
COCO server computes them (`--config.eval.meteor=True` adds METEOR, which needs Java).

`--config=configs/caption_coco.py:smoke` keeps the structure (the B/32 captioner shrunk, bf16,
beam search) on the built-in `clip_shapes` data, needs no COCO and no download: a
seconds-long CPU run for tests.
"""

from ml_collections import ConfigDict

from configs import caption_small
from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD


def get_config(arg: str | None = None) -> ConfigDict:
    config = caption_small.get_config()
    config.init_from = "clip_vit_b32@openai"
    config.batch_size = 256
    config.total_steps = 9_200  # 20 epochs of COCO's 118,287 training images
    config.data = dict(
        name="coco_caption_files",
        builder_config="",
        builder_kwargs=dict(path="", image_root="", on_bad_image="error", max_image_size=256),
        data_dir="",
        image_size=224,
        context_length=32,  # 99.9% of val2017's captions fit, SOT and EOT included
        crop_scale=(0.8, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=False,  # captions say "left" and "right"
        mean=CLIP_MEAN,
        std=CLIP_STD,
        num_threads=16,
    )
    # merges_path "" is OpenAI's bpe_simple_vocab_16e6.txt.gz, shipped inside jaxmm.
    config.tokenizer = dict(kind="clip", vocab_size=49408, merges_path="", train_on_examples=0)
    config.model = dict(name="captioner_clip_vit_b32", dtype="bfloat16", image={}, decoder={})
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 1000
    config.optim.weight_decay = 0.05
    config.optim.lr_multipliers = {"image_tower": 0.1}
    config.log_every = 100
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.eval.update(
        dict(split="validation", batch_size=512, every=2000, beam_size=3, length_penalty=0.6)
    )

    if arg == "smoke":
        small = caption_small.get_config("smoke")
        for key in ("batch_size", "total_steps", "log_every", "checkpoint_every"):
            config[key] = small[key]
        config.init_from = ""
        config.data = small.data
        config.tokenizer = small.tokenizer
        config.model = dict(
            name="captioner_clip_vit_b32",
            dtype="bfloat16",
            image=dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64),
            decoder=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        )
        config.optim.warmup_steps = 1
        config.eval = small.eval
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
