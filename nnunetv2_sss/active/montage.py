"""The PNG of a suggested scan: one row per stored slice (its most uncertain ones), the image, the
prediction over it, and the strategy's uncertainty map; written whole or not at all."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from nnunetv2_sss.active.records import CaseRecord
from nnunetv2_sss.atomic_files import write_atomically


def save_montage(path: str, record: CaseRecord, title: str, class_names: Sequence[str]) -> None:
    """``record``'s slices as a ``len(slices) x 3`` figure at ``path``; ``class_names``: the foreground
    classes (labels 1, 2, ...)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10").colors
    labels = ListedColormap([colours[i % len(colours)] for i in range(max(len(class_names), 1))])
    rows = len(record.slice_indices)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows + 0.6), squeeze=False)
    for row, index in enumerate(record.slice_indices):
        image, segmentation = record.image[row], record.segmentation[row]
        axes[row, 0].imshow(image, cmap="gray")
        axes[row, 0].set_ylabel(f"slice {index}")
        axes[row, 1].imshow(image, cmap="gray")
        axes[row, 1].imshow(np.ma.masked_equal(segmentation, 0) - 1, cmap=labels, vmin=0,
                            vmax=max(len(class_names), 1) - 1, alpha=0.5, interpolation="nearest")
        shown = axes[row, 2].imshow(record.uncertainty_map[row] / 255.0, cmap="magma", vmin=0, vmax=1)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, heading in zip(axes[0], ("image", "prediction", "uncertainty")):
        axis.set_title(heading)
    figure.colorbar(shown, ax=axes[:, 2].tolist(), fraction=0.05)
    figure.legend(handles=[Patch(color=labels(i), label=name) for i, name in enumerate(class_names)],
                  loc="lower center", ncol=max(len(class_names), 1), frameon=False)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    write_atomically(path, lambda file: file.write(buffer.getvalue()))
