"""A 2-D map of embeddings: UMAP when umap-learn is installed (the `report` extra), else PCA, named as such."""

from __future__ import annotations

import numpy as np
import torch


def project_2d(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(points [N, 2], the method's name for the plot's title)."""
    try:
        import umap
    except ImportError:
        return _pca(vectors), "PCA"
    points = umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    return np.asarray(points), "UMAP"


def _pca(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components (exact SVD of the centred vectors)."""
    centred = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    centred = centred - centred.mean(0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ right[:2].T).float().numpy()
