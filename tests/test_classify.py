"""`python -m jaxmm.classify` on a real photo agrees with the torchvision model it converts."""

import numpy as np
import pytest

from jaxmm import classify
from jaxmm.data import image_ops

torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision")

from tests.parity.reference import randomise_  # noqa: E402


def test_top5_matches_torchvision_on_a_flickr_photo(tmp_path, shared_data, capsys):
    photo = sorted((shared_data / "flickr8k_1000" / "images").iterdir())[0]
    torch.manual_seed(0)
    reference = randomise_(torchvision.models.resnet18())
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)

    (result,) = classify.main(["--model=resnet18", f"--weights={weights}", str(photo)])

    image = classify.load_image(photo, 224, image_ops.IMAGENET_MEAN, image_ops.IMAGENET_STD)
    with torch.no_grad():
        logits = reference(torch.from_numpy(image.transpose(2, 0, 1)[None].copy()))
    expected = torch.softmax(logits, dim=-1)[0].numpy()
    assert [index for index, _ in result] == list(np.argsort(-expected)[:5])
    # Tolerance: fp32 parity of the converted ResNet (~1e-6 relative on the logits).
    np.testing.assert_allclose([p for _, p in result], np.sort(expected)[::-1][:5], atol=1e-5)
    # 1000 classes: torchvision's ImageNet names label the output.
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert categories[result[0][0]] in capsys.readouterr().out


def test_a_headless_checkpoint_is_refused(tmp_path, shared_data):
    photo = sorted((shared_data / "flickr8k_1000" / "images").iterdir())[0]
    state_dict = torchvision.models.resnet18().state_dict()
    del state_dict["fc.weight"], state_dict["fc.bias"]
    torch.save(state_dict, tmp_path / "body.pth")
    with pytest.raises(SystemExit):
        classify.main(["--model=resnet18", f"--weights={tmp_path / 'body.pth'}", str(photo)])
