"""R@1, R@5 and R@10 against the query-scoring temperature (matplotlib, an optional extra)."""
from pathlib import Path

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import ConfigError
from clip_hitchhiker.reporting import result_label

PLOT_FORMATS = (".png", ".svg", ".pdf")
_METRICS = ("R1", "R5", "R10")
_COLOURS = {"R1": "tab:blue", "R5": "tab:orange", "R10": "tab:green"}


def require_matplotlib():
    """The pyplot module with the Agg backend (no display needed), or a ConfigError."""
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib (or pip install "
                          "'.[plot]')") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def temperature_figure(results, bootstrap=None):
    """The figure: one line per metric over the query-scoring temperatures (log axis), mean
    pooling as a dashed line of the same colour, and the bootstrap intervals when given
    (a bar at each temperature, joined by a band).

    results: evaluate()'s entries (failed ones are left out); bootstrap: its result or None.
    returns: a matplotlib Figure.
    """
    pyplot = require_matplotlib()
    scored = [r for r in results if "t2v" in r and r["temperature"] is not None]
    scored.sort(key=lambda r: r["temperature"])
    pooled = next((r for r in results if r["temperature"] is None and "t2v" in r), None)
    temperatures = [r["temperature"] for r in scored]
    figure, axes = pyplot.subplots(figsize=(6.4, 5.0), layout="constrained")
    for metric in _METRICS:
        colour = _COLOURS[metric]
        axes.plot(temperatures, [r["t2v"][metric] for r in scored], marker="o", color=colour,
                  label=f"{metric}, query-scoring")
        if pooled is not None:
            axes.axhline(pooled["t2v"][metric], linestyle="--", color=colour,
                         label=f"{metric}, mean pooling")
        if bootstrap is not None:
            bands = [bootstrap["intervals"][result_label(r)]["t2v"][metric] for r in scored]
            low, high = [b[0] for b in bands], [b[1] for b in bands]
            # A bar at each temperature: a band alone is invisible when there is only one.
            axes.vlines(temperatures, low, high, color=colour, linewidth=1.5, alpha=0.6)
            axes.fill_between(temperatures, low, high, color=colour, alpha=0.15, linewidth=0)
    axes.set_xscale("log")
    axes.set_xlabel("query-scoring temperature τ (log scale)")
    axes.set_ylabel("text-to-video recall (%)")
    title = "Recall against temperature"
    if bootstrap is not None:
        title += f" (bars and bands: {100 * bootstrap['confidence']:.0f}% bootstrap intervals)"
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    # Below the axes, so that it never hides a curve.
    figure.legend(fontsize=8, ncol=3, loc="outside lower center")
    return figure


def save_figure(figure, path):
    """Write figure to path, in the format its extension names (.png, .svg or .pdf)."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: the file must end in one of {PLOT_FORMATS}")
    write_atomically(path, lambda tmp: figure.savefig(tmp, format=suffix[1:], dpi=150))
