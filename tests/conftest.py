"""Small data made on the spot: tests never download and never need the full CIFAR-10 archive."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch.multiprocessing as mp
from PIL import Image

CLASSES = ("circle", "stripes")


def _picture(label: int, index: int, size: int) -> Image.Image:
    """Two visually distinct classes: a bright disc on dark, or horizontal stripes; colours vary by index."""
    rng = np.random.default_rng(1000 * label + index)
    yy, xx = np.mgrid[0:size, 0:size] / size
    colour = rng.uniform(0.3, 1.0, size=3)
    if label == 0:
        mask = ((yy - rng.uniform(0.3, 0.7)) ** 2 + (xx - rng.uniform(0.3, 0.7)) ** 2) < 0.08
    else:
        mask = (np.floor(yy * rng.integers(3, 6) * 2) % 2) == 0
    pixels = mask[..., None] * colour + rng.uniform(0, 0.15, size=(size, size, 3))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 32) -> Path:
    """root/<split>/<class>/<n>.png for each split in per_class."""
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _picture(label, i + (10_000 if split == "test" else 0), size).save(folder / f"{i:04d}.png")
    return root


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 train and 16 test images in two classes, 32 px."""
    return write_image_folder(tmp_path_factory.mktemp("tiny"), {"train": 32, "test": 8})


@pytest.fixture(scope="session")
def few_images_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train and 8 test images in two classes, 32 px: two steps of 8 per epoch, for runs of several processes."""
    return write_image_folder(tmp_path_factory.mktemp("few"), {"train": 8, "test": 4})


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nobody listens on now (all held open at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def free_ports() -> list[int]:
    """Two free TCP ports, for the rendezvous of two process groups."""
    return _free_ports(2)


@pytest.fixture(scope="session")
def spawn_ranks() -> Callable[..., None]:
    """`spawn_ranks(worker, args, world, timeout_s)` runs `worker(rank, port, *args)` in `world` fresh processes
    (port: for init_process_group's tcp:// rendezvous) and fails the test, killing them, if they take longer."""

    def run(worker: Callable[..., None], args: tuple[Any, ...], world: int = 2, timeout_s: float = 60) -> None:
        context = mp.start_processes(worker, args=(_free_ports(1)[0], *args), nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"the {world} workers did not finish within {timeout_s} s")

    return run
