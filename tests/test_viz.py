import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from bgekit import viz


def test_heatmap_labels_and_values():
    m = np.array([[1.0, 0.2], [0.2, 1.0]])
    fig = viz.similarity_heatmap(m, ["a", "b"], title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.20", "0.20", "1.00", "1.00"]
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        viz.similarity_heatmap(m, ["a", "b"], ["x", "y", "z"])


def test_histograms_one_patch_set_per_group():
    fig = viz.score_histograms({"related": [0.8, 0.9, 0.7], "unrelated": [0.3, 0.4]}, bins=5)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("related (n=3") and labels[1].startswith("unrelated (n=2")


def test_curves_draws_each_series():
    fig = viz.curves({"loss": [3, 2, 1], "val": [2.5, 2.0, 1.8]}, xlabel="step")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and list(lines[0].get_xdata()) == [1, 2, 3]


def test_umap_scatter_groups_points():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (12, 8)), rng.normal(5, 1, (12, 8))]).astype(np.float32)
    fig = viz.umap_scatter(x, ["a"] * 12 + ["b"] * 12)
    assert len(fig.axes[0].collections) == 2


def test_flow_draws_a_box_per_step_and_an_arrow_between_neighbours():
    steps = [("question", "text"), ("retrieve", "top k"), ("rerank", "fused"), ("prompt", "[1]..[n]"), ("LLM", "answer")]
    fig = viz.flow(steps, per_row=3)
    ax = fig.axes[0]
    assert len(ax.patches) == len(steps)
    names = [t.get_text() for t in ax.texts if t.get_weight() == "bold"]
    assert names == [s[0] for s in steps]
    arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation"]
    assert len(arrows) == len(steps) - 1
    with pytest.raises(ValueError, match="at least one step"):
        viz.flow([])
