"""The evaluation's centre view and its features: every path (held, streamed, `load_encoder`'s transform, `embed`)
gives the pixels of one reference written here with torchvision.transforms.v2, and the encoder's h of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from carry_fixtures import trained_run  # noqa: F401 (a fixture)
from PIL import Image
from torchvision.transforms.v2 import functional as F

from torchclr.data.sources import open_images
from torchclr.embed import embed, load_embeddings
from torchclr.evaluate.features import eval_images, extract_features, streamed_views
from torchclr.pretrained import load_encoder
from torchclr.transforms import eval_transform

SHAPES = ((32, 32), (40, 90), (100, 130), (130, 100), (75, 75), (200, 150))  # (height, width): square, wide, tall


def reference_view(image: Image.Image, image_size: int) -> torch.Tensor:
    """uint8 [3, S, S]: the shorter side resized to S (to round(S / 0.875) above 64 px, ImageNet's 256/224), the
    central square (torchvision's centre crop), then the central S crop at offset floor((side - S) / 2)."""
    side = image_size if image_size <= 64 else round(image_size / 0.875)
    pixels = F.center_crop(F.resize(F.pil_to_tensor(image), [side], antialias=True), [side, side])
    start = (side - image_size) // 2
    return F.crop(pixels, start, start, image_size, image_size)


@pytest.fixture(scope="module")
def shaped_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test/<class>/<n>.png with random pixels in the shapes of SHAPES (in file-name order)."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate(SHAPES):
        folder = root / "test" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def _references(folder: Path, image_size: int) -> tuple[list[str], torch.Tensor]:
    images = open_images(str(folder), "test")
    return list(images.names), torch.stack([reference_view(Image.open(folder / "test" / name), image_size) for name in images.names])


@pytest.mark.parametrize("image_size", [32, 80, 160])
def test_every_centre_view_path_gives_the_reference_pixels(shaped_folder: Path, image_size: int) -> None:
    names, expected = _references(shaped_folder, image_size)
    images = open_images(str(shaped_folder), "test")
    assert torch.equal(eval_images(images, image_size), expected)
    streamed = torch.cat([views for views, _ in streamed_views(images, image_size, torch.arange(len(images)), batch_size=4, workers=0)])
    assert torch.equal(streamed, expected)
    transform = eval_transform(image_size)
    for name, reference in zip(names, expected):
        pil = Image.open(shaped_folder / "test" / name).convert("RGB")
        from_pil, from_tensor = transform(pil), transform(F.pil_to_tensor(pil))
        assert type(from_pil) is torch.Tensor and from_pil.dtype == torch.float32
        assert torch.equal(from_pil, F.to_dtype(reference, torch.float32, scale=True)) and torch.equal(from_tensor, from_pil)


@pytest.mark.slow
def test_embed_and_extract_features_give_the_encoder_on_the_reference_pixels(
    shaped_folder: Path, trained_run: Path, tmp_path: Path,  # noqa: F811
) -> None:
    checkpoint = trained_run / "encoder.safetensors"
    encoder, _, info = load_encoder(checkpoint)
    size = info["config"].image_size
    names, pixels = _references(shaped_folder, size)
    with torch.no_grad():  # the reference: the encoder in eval mode on one image at a time, float32
        expected = torch.cat([encoder(F.to_dtype(view[None], torch.float32, scale=True)) for view in pixels])
    embed(checkpoint, str(shaped_folder), tmp_path / "h.npy", split="test", batch_size=4, workers=0, device="cpu", progress=False)
    written = load_embeddings(tmp_path / "h.npy")
    assert list(written.names) == list(names)
    torch.testing.assert_close(torch.from_numpy(written.vectors), expected, atol=1e-5, rtol=1e-5)
    held = eval_images(open_images(str(shaped_folder), "test"), size)
    extracted = extract_features(encoder.train(), held, torch.device("cpu"), batch_size=4, autocast_dtype=None)
    assert encoder.training  # the extractor gives the mode back as it found it
    torch.testing.assert_close(extracted, expected, atol=1e-5, rtol=1e-5)
