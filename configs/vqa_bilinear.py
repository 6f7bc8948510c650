"""Visual question answering on the built-in `vqa_shapes` scenes with bilinear fusion of the
pooled image and question features: `configs/vqa_xattn.py` with another `model.fusion`.

    python train.py --config=configs/vqa_bilinear.py --workdir=runs/vqa_bilinear

See configs/vqa_xattn.py for the data, metrics and options, BENCHMARKS.md for the
three fusions side by side.
"""

from ml_collections import ConfigDict

from configs import vqa_xattn


def get_config(arg: str | None = None) -> ConfigDict:
    config = vqa_xattn.get_config(arg)
    config.model.fusion = "bilinear"
    return config
