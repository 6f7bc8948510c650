"""Long-tailed classification on the built-in `longtail_shapes` set: `resnet18_shapes`' recipe on
48 classes whose training sizes fall exponentially from 500 to 5 images (imbalance ratio 100),
evaluated on a balanced test split.

    python train.py --config=configs/longtail_shapes.py --workdir=runs/longtail_shapes

Plain cross-entropy is the default; the class-imbalance strategies are switches:

    --config.classification_loss.name=logit_adjusted        # Menon et al. 2021, tau=1
    --config.classification_loss.name=focal                 # gamma=2
    --config.classification_loss.name=class_balanced        # Cui et al. 2019, beta=0.9999
    --config.data.sampling=class_balanced                   # or sqrt

`eval/top1` on the balanced test split is the balanced accuracy (`eval/mean_class_top1` too):
36.9% with plain cross-entropy, 50.5% with logit adjustment and 50.8% with class-balanced
sampling, each run 3-5 minutes on a busy 2-core CPU. `benchmarks/imbalance.py` trains each
strategy at equal steps; BENCHMARKS.md, "Class imbalance", has the whole table. Needs no
download; the set builds in ~10 s.

`--config=configs/longtail_shapes.py:smoke` shrinks it to a seconds-long run (tests use it).
"""

from ml_collections import ConfigDict

from configs import resnet18_shapes


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet18_shapes.get_config()
    config.data.name = "longtail_shapes"
    config.data.builder_config = "default"
    # Half resnet18_shapes' width and steps: every strategy of the benchmark trains in about
    # three minutes on a 2-core CPU.
    config.model.width = 8
    config.batch_size = 128
    config.total_steps = 200
    config.optim.warmup_steps = 20
    config.eval = dict(split="test", batch_size=480, every=0)

    if arg == "smoke":
        resnet18_shapes.shrink_to_smoke(config, model=dict(name="resnet_test", stem="cifar"))
        config.data.name = "longtail_shapes"
        config.data.builder_config = "smoke"
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
