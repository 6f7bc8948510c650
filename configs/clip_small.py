"""A small CLIP on the built-in `clip_shapes` dataset: the embedded default job.

    python train.py --config=configs/clip_small.py --workdir=runs/clip_small

Needs no download: the dataset is generated on first use (~30 s) into
~/tensorflow_datasets. On a 2-core CPU the run takes under 10 minutes and
reaches >= 90% zero-shot top-1 on the test split's 48 colour-shape classes
(chance 1/48 = 2.1%) and >= 85% on the 8 combinations held out of training
(see BENCHMARKS.md for measured numbers).

`--config=configs/clip_small.py:smoke` shrinks everything to a seconds-long run
for tests.
"""

from ml_collections import ConfigDict

import configs


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.task = "contrastive"
    config.init_from = ""  # a jaxmm run folder to start from (see jaxmm/train/pretrained.py)
    # WiSE-FT (jaxmm/train/wise.py): with init_from, also evaluate the fine-tuned weights mixed
    # with the starting ones, (1 - a) * start + a * tuned, for each a here; 1.0 alone: nothing.
    config.wise_alpha = (1.0,)
    config.seed = 0
    config.batch_size = 256
    config.total_steps = 800
    # Micro-batches per step (jaxmm/train/accumulation.py): batch_size stays the global batch,
    # only the memory in flight shrinks; contrastive losses still see all batch_size negatives.
    config.grad_accum_steps = 1
    config.loss = "infonce"  # or "siglip" (adds the learnable logit bias)
    # How the loss meets the [N, N] logits (jaxmm/ring_losses.py): "global" builds the whole
    # matrix; "chunked" goes through it in blocks of loss_chunk_size rows; "ring" keeps
    # each device on its local batch and passes the text embeddings round the devices,
    # going through each device's block in chunks of loss_chunk_size rows.
    config.loss_impl = "global"
    config.loss_chunk_size = 256
    config.mesh = configs.MESH
    config.mesh_rules = configs.MESH_RULES
    config.distributed = configs.DISTRIBUTED

    # Knowledge distillation (jaxmm/train/distillation.py), off while teacher is "": the
    # teacher's weights (a jaxmm run folder, a PyTorch checkpoint or a MODEL@TAG weights tag),
    # its model section (name "": the run folder's own, or the tag's model), the distillation
    # term's share of the loss and its softmax temperature.
    config.distill = dict(
        teacher="", teacher_model=dict(name=""), weight=0.5, temperature=1.0, embedding_weight=0.0
    )

    config.data = dict(
        name="clip_shapes",
        builder_config="default",
        builder_kwargs={},
        data_dir="",  # empty: the tfds default, ~/tensorflow_datasets
        image_size=32,
        context_length=32,
        crop_scale=(0.7, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_threads=2,
        # Per-example augmentation (jaxmm/data/augment.py), all off: crop_padding > 0 pads and
        # crops at random instead of the resized crop; color_jitter = (brightness, contrast,
        # saturation, hue) strengths; randaugment a timm spec such as "rand-m9-mstd0.5";
        # random erasing with erase_mode "pixel", "rand" or "const".
        crop_padding=0,
        color_jitter=(0.0, 0.0, 0.0, 0.0),
        color_jitter_random_order=False,
        randaugment="",
        erase_prob=0.0,
        erase_mode="pixel",
        # Caption augmentation, EDA (jaxmm/data/text_augment.py): the probability that a caption
        # gets each operation; alpha is the share of its words changed. synonyms: "shapes" (the
        # built-in clip_shapes table), "file" (a .json/.tsv table at synonyms_path) or "wordnet"
        # (WordNet's database folder at synonyms_path, "" = Debian's /usr/share/wordnet).
        text_augment=dict(
            synonym_replacement=0.0,
            random_insertion=0.0,
            random_swap=0.0,
            random_deletion=0.0,
            alpha=0.1,
            synonyms="shapes",
            synonyms_path="",
        ),
    )
    # kind "bpe" trains a small BPE on the captions; "clip" is OpenAI's vocabulary, read from
    # merges_path ("" = the copy of bpe_simple_vocab_16e6.txt.gz shipped inside jaxmm).
    config.tokenizer = dict(kind="bpe", vocab_size=1024, merges_path="", train_on_examples=5000)
    config.model = dict(
        name="clip_test",
        image=dict(
            patch_size=8, width=128, depth=4, num_heads=4, mlp_dim=256, pool="gap", stem="conv"
        ),
        text=dict(context_length=32, width=128, depth=2, num_heads=4, mlp_dim=256),
        embed_dim=128,
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
        # Parameter-path prefixes left untouched, e.g. ("image_tower",) for LiT.
        frozen=(),
        # Parameter-path prefix -> learning-rate multiplier (longest prefix wins, 0 = frozen),
        # e.g. {"image_tower": 0.1}; see jaxmm/train/optimizer.py.
        lr_multipliers={},
    )
    config.log_every = 20
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    # A step whose loss, gradients or updated parameters are not all finite is never applied;
    # "stop" then raises an error naming them, "skip" goes on (counted in train/skipped_steps).
    config.nonfinite = "stop"
    config.progress_bar = True
    config.eval = dict(
        split="test",
        templates="shapes",
        batch_size=512,
        every=0,
        # Probes of the frozen image features, run only by `python -m jaxmm.evaluate`: a
        # logistic-regression linear probe and k-shot prototypes, e.g. few_shot=(1, 5, 10).
        linear_probe=False,
        few_shot=(),
        # The labelled split the probes learn from (clip_shapes' train split has no labels);
        # probe_val_fraction of it, drawn with probe_seed, chooses the probe's L2 strength.
        probe_split="validation",
        probe_val_fraction=0.2,
        probe_seed=0,
        # Image and caption embeddings of this many evaluation examples for TensorBoard's
        # embedding projector, with thumbnails and captions (0: none).
        projector_samples=0,
    )

    if arg == "smoke":
        config.batch_size = 16
        config.total_steps = 4
        config.log_every = 1
        config.checkpoint_every = 2
        config.data.builder_config = "smoke"
        config.data.context_length = 16
        config.tokenizer.vocab_size = 600
        config.model.image = dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64)
        config.model.text = dict(context_length=16, width=32, depth=1, num_heads=2, mlp_dim=64)
        config.model.embed_dim = 32
        config.optim.warmup_steps = 1
        config.eval.batch_size = 64
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
