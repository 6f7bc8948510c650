"""A small CLIP on your own image-caption collection: no code changes needed.

    python train.py --config=configs/clip_captions.py --workdir=runs/my_captions \
        --config.data.builder_kwargs.path=/data/captions.csv

`path` is a CSV/TSV (header with `image` and `caption` columns, optional `split`)
or a JSONL file (`{"image": ..., "caption": ...}` or `"captions": [...]`), image
paths relative to `image_root` (default: the file's folder). With
`--config.data.name=coco_caption_files`, `path` is COCO's folder as downloaded
(`annotations/captions_{train,val}2017.json`, `train2017/`, `val2017/`; val2017 is
the validation split), or one COCO captions JSON with `image_root` its image folder.
The first run converts everything to an array_record tfds dataset under `data_dir`;
later runs reuse it. A missing or corrupt image stops the conversion with an error
naming the file, unless `--config.data.builder_kwargs.on_bad_image=skip`, which
skips and counts it.

Evaluation is image<->text retrieval on the validation split (`val_fraction`, 10%, of
the images, chosen by a stable hash of their path, unless the file has a `split` column
or COCO's val file is there). To try it with no data of your own, export the built-in
scenes first: `python -m jaxmm.data.export --num=1000 --out=my_captions/`, then
`--config.data.builder_kwargs.path=my_captions/captions.csv`.
"""

from ml_collections import ConfigDict

from configs import clip_small
from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD


def get_config(arg: str | None = None) -> ConfigDict:
    config = clip_small.get_config()
    config.batch_size = 128
    config.total_steps = 300
    config.data.name = "image_caption_file"
    config.data.builder_config = ""
    config.data.builder_kwargs = dict(
        path="", image_root="", on_bad_image="error", max_image_size=256, val_fraction=0.1
    )
    config.data.image_size = 64
    config.data.context_length = 32
    config.data.crop_scale = (0.5, 1.0)
    config.data.flip = False  # captions may say "left" and "right"
    config.data.mean, config.data.std = CLIP_MEAN, CLIP_STD
    config.tokenizer.vocab_size = 4096
    config.model.text.context_length = 32
    config.eval.update(
        dict(split="validation", templates="simple", batch_size=256, every=0, probe_split="train")
    )

    if arg == "smoke":
        smoke = clip_small.get_config("smoke")
        config.batch_size, config.total_steps = smoke.batch_size, smoke.total_steps
        config.log_every, config.checkpoint_every = smoke.log_every, smoke.checkpoint_every
        config.data.image_size = 32
        config.data.context_length = 16
        config.tokenizer.vocab_size = 600
        config.model = smoke.model
        config.eval.batch_size = 64
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
