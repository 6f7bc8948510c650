"""Knowledge distillation on the built-in `clip_shapes` classes: the ResNet-18 of
`configs/resnet18_shapes.py` (width 16, 0.7M parameters) teaches the same network at width 4
(16 times fewer parameters), trained with the teacher's recipe and steps.

    python train.py --config=configs/resnet18_shapes.py --workdir=runs/resnet18_shapes
    python train.py --config=configs/distill_shapes.py --workdir=runs/distill_shapes

The first command trains the teacher (about five minutes on a 2-core CPU); the second reads
its newest checkpoint from `distill.teacher`. `--config.distill.teacher=""` trains the same
student without a teacher; BENCHMARKS.md compares the two. Any classifier's run folder, a
PyTorch checkpoint (with `distill.teacher_model`) or a weights tag can teach instead, if it
was trained on these 48 classes.

`--config=configs/distill_shapes.py:smoke` shrinks the student to a seconds-long run (tests
give it a smoke teacher).
"""

from ml_collections import ConfigDict

from configs import resnet18_shapes


def get_config(arg: str | None = None) -> ConfigDict:
    config = resnet18_shapes.get_config()
    # A half-width MobileNetV2 was tried first: at 32 px its 32x downsampling leaves it at 46%
    # without a teacher and 43% with one (BENCHMARKS.md).
    config.model = dict(name="resnet18", width=4, stem="cifar")
    # Hinton et al.'s mix: most of the loss from the teacher's softened logits.
    config.distill.teacher = "runs/resnet18_shapes"
    config.distill.weight = 0.9
    config.distill.temperature = 4.0
    if arg == "smoke":
        resnet18_shapes.shrink_to_smoke(config, model=dict(name="mobilenet_v2_test"))
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
