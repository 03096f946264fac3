"""Notebook setup: the same seeds, threads, print options and plot style everywhere.

Fixed seeds and a fixed thread count make stored outputs reproducible, so nbval can
compare them with a fresh run; the plot style keeps every chapter's figures alike.
"""

from __future__ import annotations

import random

import numpy as np

PLOT_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "svg.hashsalt": "all-about-norm",  # deterministic ids if a figure is saved as SVG
}


def setup(seed: int = 0, threads: int = 1) -> None:
    """Seed Python, NumPy and torch; fix torch's thread count; set print options and plot style.

    Example:

    >>> import random
    >>> import torch
    >>> threads = torch.get_num_threads()
    >>> setup(seed=1)
    >>> first = random.random()
    >>> setup(seed=1)
    >>> random.random() == first, torch.get_num_threads()
    (True, 1)
    >>> torch.set_num_threads(threads)  # undo, outside a notebook
    >>> torch.use_deterministic_algorithms(False)
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread: results and timings do not depend on how many cores the reader has.
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)
    try:
        import matplotlib as mpl
    except ImportError:  # plotting is optional for refimpl's own users
        return
    mpl.rcParams.update(PLOT_STYLE)


def show(fig) -> None:
    """Display a matplotlib figure as a PNG only, then close it.

    The inline backend stores a "<Figure size ...>" text stand-in next to every image;
    displaying the PNG bytes ourselves keeps the stored outputs to the picture alone.

    Example:

    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> show(fig)  # a notebook shows the PNG; plain Python prints a placeholder
    <IPython.core.display.Image object>
    >>> plt.fignum_exists(fig.number)  # closed, so it is not displayed a second time
    False
    """
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    display(Image(buffer.getvalue()))
