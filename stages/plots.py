"""Figures a person looks at: replay grids (unguided vs guided from the same noise) and the accuracy
matrix as a heatmap. PNG files written atomically. Matplotlib loads only when a figure is drawn
(half a second of every stage start that imports this module otherwise)."""
from __future__ import annotations

import numpy as np

from guide.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image(x) -> np.ndarray:
    img = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def replay_grid(path: str, unguided, guided, labels, targets, names: list[str], title: str) -> None:
    """Two rows over the same noise and labels: unguided replay, then guided replay with the class
    the guidance aimed at."""
    k, plt = len(labels), _pyplot()
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k + 0.6, 3.2), squeeze=False)
    for j in range(k):
        for row, imgs in enumerate((unguided, guided)):
            ax = axes[row][j]
            ax.imshow(_image(imgs[j]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[0][j].set_title(f"y={names[int(labels[j])]}", fontsize=8)
        tgt = int(targets[j])
        axes[1][j].set_title("→ " + (names[tgt] if tgt >= 0 else "—"), fontsize=8)
    axes[0][0].set_ylabel("unguided", fontsize=8)
    axes[1][0].set_ylabel("guided", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def accuracy_heatmap(path: str, matrix: np.ndarray, title: str) -> None:
    """A[i][j] = accuracy on task i after task j; blank where task i is not seen yet."""
    t, plt = matrix.shape[0], _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * t + 2, 0.8 * t + 1.6))
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                        color="white" if matrix[i, j] < 0.6 else "black", fontsize=9)
    ax.set_xticks(range(t), [str(j) for j in range(t)])
    ax.set_yticks(range(t), [str(i) for i in range(t)])
    ax.set_xlabel("after training task j")
    ax.set_ylabel("accuracy on task i")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
