"""`inbox report --plot`: the reports as a picture (matplotlib, the `analytics` extra)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any


def draw(
    out: Path, *, title: str, first_response_s: list[float], resolution_s: list[float],
    backlog: list[dict[str, Any]],
) -> None:
    """Three panels: first-response and resolution-time histograms, the backlog over the day."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    fig.suptitle(title)
    for ax, samples, name in ((a, first_response_s, "First response"), (b, resolution_s, "Resolution")):
        unit, scale = ("minutes", 60.0) if samples and max(samples) >= 120 else ("seconds", 1.0)
        minutes = [s / scale for s in samples]
        if minutes:
            ax.hist(minutes, bins=min(40, max(5, len(minutes) // 3)), color="#4472c4")
            for q, style in ((0.5, "--"), (0.9, ":")):
                value = sorted(minutes)[min(len(minutes) - 1, int(q * len(minutes)))]
                ax.axvline(value, color="black", linestyle=style, label=f"p{int(q * 100)} ≈ {value:.3g} {unit}")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{name} time ({len(minutes)} room cycles)")
        ax.set_xlabel(unit)
        ax.set_ylabel("room cycles")
    times: list[datetime] = [p["at"] for p in backlog]
    c.step(times, [p["unassigned"] for p in backlog], where="post", color="#c0504d")
    c.set_title("Unassigned backlog (UTC)")
    c.set_ylabel("unassigned rooms")
    c.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    fig.savefig(out, dpi=100)
    plt.close(fig)
