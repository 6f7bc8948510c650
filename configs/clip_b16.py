"""CLIP ViT-B/16 with the paper's recipe (Radford et al. 2021), for accelerators.

    python train.py --config=configs/clip_b16.py --workdir=runs/clip_b16 \
        --config.data.builder_kwargs.path=/data/my_captions.csv

Image tower ViT-B/16 at 224 px, text tower 12 layers x 512 wide, context 77,
OpenAI's BPE vocabulary (49,408 tokens; the merges file ships with jaxmm), 512-d
joint embedding. Optimiser as in the paper's section 2.5 and table 19: AdamW (beta2
0.98, eps 1e-6), weight decay 0.2, batch 32,768, learning rate 5e-4 with 2,000 warmup
steps and cosine decay, 32 epochs (of a 400M-pair dataset: ~390k steps). Reads any
image-text dataset: by default a CSV/TSV/JSONL of image paths and captions
(`image_caption_file`), or `--config.data.name=coco_caption_files` with `path` COCO's
folder, or any prepared tfds dataset whose examples carry `image` and `captions`.
bf16 compute with float32 parameters.

`--config=configs/clip_b16.py:smoke` keeps the structure but shrinks it to a
seconds-long CPU run on the built-in dataset (tests use it).
"""

from ml_collections import ConfigDict

from configs import clip_small
from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD


def get_config(arg: str | None = None) -> ConfigDict:
    config = clip_small.get_config()
    config.batch_size = 32768
    config.total_steps = 390_000
    config.mesh = dict(data=-1, fsdp=1, model=1)

    config.data = dict(
        name="image_caption_file",
        builder_config="",
        builder_kwargs=dict(path="data/captions.csv"),
        data_dir="",
        image_size=224,
        context_length=77,
        crop_scale=(0.9, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=False,  # captions may say "left" and "right"
        mean=CLIP_MEAN,
        std=CLIP_STD,
        num_threads=16,
    )
    # merges_path "" is OpenAI's bpe_simple_vocab_16e6.txt.gz, shipped inside jaxmm.
    config.tokenizer = dict(kind="clip", vocab_size=49408, merges_path="", train_on_examples=0)
    config.model = dict(name="clip_vit_b16", dtype="bfloat16", image={}, text={})
    # AdamW betas, eps and clipping as in clip_small (the paper's values).
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 2000
    config.optim.weight_decay = 0.2
    config.log_every = 100
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.eval.update(
        dict(
            split="validation",
            templates="imagenet",
            batch_size=1024,
            every=10_000,
            probe_split="train",  # probes need labels: a labelled dataset's train split
        )
    )

    if arg == "smoke":
        small = clip_small.get_config("smoke")
        config.batch_size = small.batch_size
        config.total_steps = small.total_steps
        config.log_every = small.log_every
        config.checkpoint_every = small.checkpoint_every
        config.data = small.data
        config.tokenizer = small.tokenizer
        config.model = dict(
            name="clip_vit_b16",
            dtype="bfloat16",
            image=small.model.image.to_dict(),
            text=small.model.text.to_dict(),
            embed_dim=small.model.embed_dim,
        )
        config.optim.warmup_steps = 1
        config.eval = small.eval
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
