"""Knowledge distillation between CLIPs on the built-in `clip_shapes`: the default job's CLIP
(`configs/clip_small.py`) teaches one with half its width, its image-text logits matched to
the teacher's on every batch (and its embeddings, of the same width, drawn towards the
teacher's).

    python train.py --config=configs/clip_small.py --workdir=runs/clip_small
    python train.py --config=configs/distill_clip_small.py --workdir=runs/distill_clip_small

The student reads the teacher run's tokenizer (copied into its workdir), so both see the same
token ids. `--config.distill.teacher=""` trains the same student without a teacher;
BENCHMARKS.md compares the two.

`--config=configs/distill_clip_small.py:smoke` shrinks the student to a seconds-long run
(tests give it a smoke teacher).
"""

from ml_collections import ConfigDict

from configs import clip_small


def get_config(arg: str | None = None) -> ConfigDict:
    config = clip_small.get_config(arg)  # its smoke setting shrinks everything alike
    for tower in (config.model.image, config.model.text):
        tower.update(width=tower.width // 2, mlp_dim=tower.mlp_dim // 2)
    config.distill.teacher = "runs/clip_small"
    config.distill.weight = 0.5
    config.distill.temperature = 1.0
    config.distill.embedding_weight = 0.0
    return config
