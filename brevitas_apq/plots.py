"""PNG plots of training runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from brevitas_apq.io import save_figure


def learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Training loss and validation RMSE per epoch, one colour per phase (float, QAT)."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    for phase, rows in history.groupby("phase", sort=False):
        ax_loss.plot(rows.epoch, rows.train_loss, marker=".", label=phase)
        ax_val.plot(rows.epoch, rows.val_rmse, marker=".", label=phase)
    ax_loss.set(xlabel="epoch", ylabel="training MSE (scaled target)", yscale="log")
    ax_val.set(xlabel="epoch", ylabel="validation RMSE (target units)")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    return save_figure(fig, path)


def forecast(
    timestamps, truth: np.ndarray, predictions: dict[str, np.ndarray], path: str | Path, unit=""
) -> Path:
    """Forecasts against the truth on a stretch of the test split."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.plot(timestamps, truth, color="black", lw=1.2, label="truth")
    for name, values in predictions.items():
        ax.plot(timestamps, values, lw=1.0, label=name)
    ax.set(ylabel=f"target {unit}".strip(), title="Forecast against truth (test split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    return save_figure(fig, path)


def symmetry(frame: pd.DataFrame, path: str | Path, threshold: float | None = None) -> Path:
    """The symmetry metric S over training steps, one line per APQ quantiser."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    if frame.empty:
        ax.text(0.5, 0.5, "no APQ quantiser in this plan", ha="center", va="center")
    for name, rows in frame.groupby("quantizer", sort=False):
        ax.plot(rows.step, rows.symmetry, lw=0.8, label=name)
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="training step", ylabel="S = |max + min| / (max - min)", ylim=(-0.02, 1.02))
    ax.set_title("Symmetry metric of each APQ quantiser (above the threshold: AQ)")
    ax.grid(alpha=0.3)
    if not frame.empty:
        ax.legend(fontsize=6, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def bars(values: pd.Series, path: str | Path, title: str, ylabel: str) -> Path:
    """A labelled bar chart (sensitivity, per-configuration results)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(values)), 3.8))
    ax.bar([str(i) for i in values.index], values.to_numpy())
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return save_figure(fig, path)
