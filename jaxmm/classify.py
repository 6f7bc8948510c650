"""Classify images with a converted PyTorch checkpoint: `python -m jaxmm.classify`.

    python -m jaxmm.classify --model=resnet50 --weights=resnet50-11ad3fa6.pth dog.jpg cat.png
    python -m jaxmm.classify --weights=resnet50@torchvision:IMAGENET1K_V2 dog.jpg

Prints the top classes of each image with their probabilities. Images get the standard
ImageNet evaluation view (central 87.5% square, resized to `--size`, ImageNet mean/std, as
torchvision's and timm's weights expect); `--mean`/`--std` change the normalisation (timm's
ViT weights use 0.5/0.5). Weights named by tag (`jaxmm.weights`: `--weights=TAG` with
`--model`, or `--weights=MODEL@TAG`) are downloaded once and bring their own normalisation
and crop. Class names come from `--labels` (a text file, one name per line),
or, for 1000-class checkpoints with torchvision installed, from torchvision's ImageNet list;
otherwise indices are printed.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image

from jaxmm import cli, convert, weights
from jaxmm.data import image_ops
from jaxmm.models import create_model


def load_image(path: str | pathlib.Path, size: int, mean, std, crop_fraction=0.875) -> np.ndarray:
    """`[size, size, 3]` float32: the central `crop_fraction` square, resized and normalised."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    box = image_ops.center_crop_box(pixels.shape[0], pixels.shape[1], crop_fraction)
    return image_ops.normalize(image_ops.crop_resize(pixels, box, size), mean, std)


def class_names(num_classes: int, labels_file: str | None) -> list[str] | None:
    """Names from `labels_file`, else torchvision's ImageNet-1k list for 1000 classes."""
    if labels_file:
        names = pathlib.Path(labels_file).read_text().splitlines()
        if len(names) != num_classes:
            raise ValueError(f"{labels_file} has {len(names)} names for {num_classes} classes")
        return names
    if num_classes == 1000:
        try:
            from torchvision.models import ResNet50_Weights
        except ImportError:
            return None
        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return None


def top_classes(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most probable `(class, probability)` pairs of one logit vector."""
    probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float32)))
    order = np.argsort(-probabilities)[:k]
    return [(int(i), float(probabilities[i])) for i in order]


def main(argv: Sequence[str] | None = None) -> list[list[tuple[int, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", help="registry name, e.g. resnet50 (implied by MODEL@TAG)")
    parser.add_argument(
        "--weights",
        required=True,
        help="a weights tag (torchvision:IMAGENET1K_V2), MODEL@TAG, or a "
        ".pth/.pt/.bin/.safetensors file",
    )
    parser.add_argument("--size", type=int, default=224, help="input resolution")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    parser.add_argument("--mean", type=float, nargs=3, help="default: the weights' or ImageNet's")
    parser.add_argument("--std", type=float, nargs=3, help="default: the weights' or ImageNet's")
    parser.add_argument("--labels", help="text file with one class name per line")
    args = parser.parse_args(argv)

    try:
        entry = weights.resolve(args.weights, args.model)
    except (KeyError, ValueError) as err:
        parser.error(str(err).strip("'\""))
    if args.model is None:
        if entry is None:
            parser.error("--model is required unless --weights names MODEL@TAG")
        args.model = entry.model
    mean = args.mean or (entry.mean if entry else image_ops.IMAGENET_MEAN)
    std = args.std or (entry.std if entry else image_ops.IMAGENET_STD)
    crop_fraction = entry.crop_fraction if entry else 0.875
    try:  # before any download
        head = convert.head_keys(args.model)
    except TypeError:  # no `num_classes` field: CLIP and the text tower have no classifier
        parser.error(f"--model={args.model} is not an image classifier")
    if entry is not None:
        state_dict = weights.load_state_dict(entry)
    else:
        state_dict = convert.load_state_dict(args.weights)
    # The class count is whatever the checkpoint's classifier says.
    weight = next(key for key in sorted(head) if key.endswith("weight"))
    if weight not in state_dict:
        parser.error(f"{args.weights} has no classifier head ({weight} missing)")
    num_classes = int(np.shape(state_dict[weight])[0])
    variables = convert.from_torch(args.model, state_dict, num_classes=num_classes)
    model = create_model(args.model, num_classes=num_classes)
    names = class_names(num_classes, args.labels)
    predict = jax.jit(lambda images: model.apply(variables, images))
    results = []
    for path in args.images:
        image = load_image(path, args.size, mean, std, crop_fraction)
        logits = np.asarray(predict(image[None]))[0]
        results.append(top_classes(logits, args.top))
        print(path)
        for index, probability in results[-1]:
            label = names[index] if names else f"class {index}"
            print(f"  {probability:7.2%}  {label}")
    return results


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
