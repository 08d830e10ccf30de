"""nnU-Net's local logger with the semi-supervised figures added (log and progress.png)."""
from __future__ import annotations

from typing import Dict, Sequence

import matplotlib
from batchgenerators.utilities.file_and_folder_operations import join

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402


class SemiSupervisedLocalLogger(LocalLogger):
    """Adds one list per semi-supervised figure (one value per epoch, as nnU-Net's keys)
    and draws them as a fourth panel under nnU-Net's three in ``progress.png``.

    ``figures`` maps logger key -> legend label, e.g. ``{'ssl_unlabeled_loss': 'unlabeled loss'}``;
    ``count_figures`` are counts (e.g. prompts per volume), drawn against a right-hand axis of their own.
    """

    def __init__(self, figures: Dict[str, str], count_figures: Sequence[str] = (), verbose: bool = False):
        super().__init__(verbose)
        self.figures = dict(figures)
        self.count_figures = tuple(count_figures)
        for key in self.figures:
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict):
        """Restore, keeping figure lists a checkpoint may lack (e.g. added in a newer version)."""
        super().load_checkpoint(checkpoint)
        num_epochs = len(self.my_fantastic_logging["train_losses"])
        for key in self.figures:
            self.my_fantastic_logging.setdefault(key, [float("nan")] * num_epochs)

    def plot_progress_png(self, output_folder: str):
        """nnU-Net's progress.png, then the same file with the semi-supervised panel appended below it. The panel
        is drawn as a figure of its own (the width of nnU-Net's image, a third of its height) and the two are
        joined as 8-bit pixels: reading nnU-Net's 3000 x 5400 image back into a figure and drawing it again
        (what this did before) took 1.3 GB of host memory and about 8 s, every epoch."""
        from PIL import Image
        super().plot_progress_png(output_folder)
        epoch = min(len(v) for v in self.my_fantastic_logging.values()) - 1
        path = join(output_folder, "progress.png")
        with Image.open(path) as image:
            nnunet_panels = image.convert("RGBA")
        width, height = nnunet_panels.size
        dpi = 100
        fig = plt.figure(figsize=(width / dpi, height / 3 / dpi), dpi=dpi)
        ax = fig.add_axes((0.08, 0.12, 0.84, 0.64))
        counts = ax.twinx() if self.count_figures else None
        x_values = list(range(epoch + 1))
        colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3)
        lines = []
        for key, label in self.figures.items():
            axis, style = (counts, "--") if key in self.count_figures else (ax, "-")
            lines += axis.plot(x_values, self.my_fantastic_logging[key][: epoch + 1], style, label=label,
                               linewidth=4, color=next(colours))
        ax.set_xlabel("epoch", fontsize=28)
        ax.set_ylabel("semi-supervised", fontsize=28)
        ax.tick_params(labelsize=24)
        if counts is not None:
            counts.set_ylabel("count (dashed)", fontsize=28)
            counts.tick_params(labelsize=24)
        ax.legend(handles=lines, loc="lower left", bbox_to_anchor=(0, 1), ncol=min(3, len(self.figures)),
                  fontsize=24)
        fig.canvas.draw()
        panel = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        combined = Image.new("RGBA", (width, height + panel.height), "white")
        combined.paste(nnunet_panels, (0, 0))
        combined.paste(panel, (0, height))
        plt.close(fig)
        combined.save(path)
