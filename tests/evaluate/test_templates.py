"""The shipped zero-shot data against OpenAI's own lists: ImageNet's 1,000 class names and 80
templates (open_clip's copy of OpenAI's notebook, read without importing torch), and the
counts of every dataset with class names. CIFAR's strings are compared with OpenAI's
`prompts.md` in tests/evaluate/test_zeroshot.py."""

import importlib.util
import pathlib

import pytest

from jaxmm.evaluate import templates

# (classes, templates) per dataset, as OpenAI lists them: CIFAR-100 reuses CIFAR-10's 18.
EXPECTED_COUNTS = {"cifar10": (10, 18), "cifar100": (100, 18), "imagenet": (1000, 80)}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_counts(name):
    num_classes, num_templates = EXPECTED_COUNTS[name]
    assert len(templates.CLASS_NAMES[name]) == num_classes
    assert len(templates.get_templates(name)) == num_templates


def test_every_class_name_set_has_templates():
    assert set(templates.CLASS_NAMES) == set(EXPECTED_COUNTS)
    assert set(templates.CLASS_NAMES) <= set(templates.TEMPLATES)


def test_imagenet_names_are_openais_with_their_two_repeats():
    names = templates.CLASS_NAMES["imagenet"]
    assert names[:3] == ("tench", "goldfish", "great white shark")
    assert names[-1] == "toilet paper"
    # OpenAI's list names two pairs of classes alike; label order must keep both copies.
    repeated = {name for name in names if names.count(name) > 1}
    assert repeated == {"missile", "sunglasses"}
    assert [i for i, name in enumerate(names) if name in repeated] == [657, 744, 836, 837]
    assert all(name == name.strip() and name for name in names)


def _open_clip_metadata() -> dict:
    """open_clip's `zero_shot_metadata` module namespace (plain data, no imports), executed
    from its file so that torch, which `import open_clip` pulls in, is not needed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed (the reference for OpenAI's ImageNet lists)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "zero_shot_metadata.py"
    if not path.is_file():
        pytest.skip(f"{path} not found in this open_clip version")
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def test_imagenet_matches_open_clip():
    reference = _open_clip_metadata()
    assert templates.CLASS_NAMES["imagenet"] == tuple(reference["IMAGENET_CLASSNAMES"])
    # open_clip keeps the templates as lambdas: render them with the placeholder back.
    openai_templates = tuple(fn("{}") for fn in reference["OPENAI_IMAGENET_TEMPLATES"])
    assert templates.get_templates("imagenet") == openai_templates
