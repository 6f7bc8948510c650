"""A small image captioner on the built-in `clip_shapes` dataset, sized for a CPU.

    python train.py --config=configs/caption_small.py --workdir=runs/caption_small
    python -m jaxmm.caption --workdir=runs/caption_small image.png

`captioner_small`: the ViT image tower of configs/clip_small.py (conv stem, 4 layers x 128,
its 16 patch tokens) read by a 2-layer, 128-wide causal decoder with cross-attention, over a
1,024-token BPE learnt from the captions. Trained with teacher forcing and label smoothing;
evaluated by generating a caption for each of the test split's 4,800 images (greedy; set
`--config.eval.beam_size=3` for beam search) and scoring it with BLEU-1..4, ROUGE-L and
CIDEr-D against the image's three captions, and by whether it names the image's colour and
shape (`caption/attribute_accuracy`), also on the 8 colour-shape pairs never seen in training
(`caption/heldout_attribute_accuracy`).

Measured on a 2-core CPU shared with other jobs (load average 3-5), 1,500 steps of 128:
15.4 min, attribute accuracy 83.5%, but 17.5% on the held-out pairs (the colour is always
right; the shape is that of a pair seen in training), BLEU-4 0.243, CIDEr-D 1.67. The image
tower learnt from captions alone binds shape to colour. Starting it from a run of
configs/clip_small.py and keeping it frozen (LiT-style) gives 94.6% and 77.9% held-out,
BLEU-4 0.260, CIDEr-D 1.75 (22 min under that load):

    python train.py --config=configs/clip_small.py --workdir=runs/clip_small
    python train.py --config=configs/caption_small.py --workdir=runs/caption_small_clip \
        --config.init_from=runs/clip_small "--config.optim.frozen=('image_tower',)"

`--config=configs/caption_small.py:smoke` shrinks everything to a seconds-long run for tests.
"""

from ml_collections import ConfigDict

import configs


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "captioning"
    # A jaxmm CLIP run (or MODEL@TAG weights) whose image tower starts this one's.
    config.init_from = ""
    config.seed = 0
    config.batch_size = 128
    config.total_steps = 1500
    config.mesh = configs.MESH
    config.mesh_rules = configs.MESH_RULES
    config.distributed = configs.DISTRIBUTED
    config.label_smoothing = 0.1

    config.data = dict(
        name="clip_shapes",
        builder_config="default",
        builder_kwargs={},
        data_dir="",
        image_size=32,
        # The longest caption is 21 tokens with SOT and EOT (the 1,024-token BPE); 24 keep all.
        context_length=24,
        crop_scale=(0.7, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,  # captions say "top" and "bottom", never "left" or "right"
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_threads=2,
    )
    config.tokenizer = dict(kind="bpe", vocab_size=1024, merges_path="", train_on_examples=5000)
    # The captioner_small entry's fields, listed so that `--config.model.decoder.depth=1` and
    # the like work: `image` for the tower (configs/clip_small.py's), `decoder` for the decoder.
    config.model = dict(
        name="captioner_small",
        image=dict(
            patch_size=8, width=128, depth=4, num_heads=4, mlp_dim=256, pool="gap", stem="conv"
        ),
        decoder=dict(width=128, depth=2, num_heads=4, mlp_dim=256),
    )
    config.optim = dict(
        name="adamw",
        learning_rate=2e-3,
        warmup_steps=100,
        end_factor=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.1,
        grad_clip_norm=1.0,
        frozen=(),
        lr_multipliers={},
    )
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.nonfinite = "stop"
    config.progress_bar = True
    config.eval = dict(
        split="test",
        batch_size=480,
        every=0,
        beam_size=1,  # 1: greedy search
        length_penalty=0.6,  # GNMT's alpha, for beam search
        max_length=0,  # generated tokens + SOT; 0: data.context_length
        meteor=False,  # METEOR needs Java and takes a few seconds more
        num_examples=0,  # 0: the whole split
    )

    if arg == "smoke":
        config.batch_size = 16
        config.total_steps = 4
        config.log_every = 1
        config.checkpoint_every = 2
        config.data.builder_config = "smoke"
        config.data.context_length = 16
        config.tokenizer.vocab_size = 600
        config.model.image = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
        config.model.decoder = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
        config.optim.warmup_steps = 1
        config.eval.batch_size = 48
        config.eval.beam_size = 2
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
