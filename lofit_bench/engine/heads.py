"""Head selections on disk: the ``heads.json`` a head-level method saves, and `lofit-bench heads`.

A selection says which attention heads a method edits, where they came from (its own stage-1
ranking, random, another run's file) and, when there is one, the score of every head. LoFiT
writes one per fold into its artefacts folder; another run reads it back for cross-task head
transfer (``--method-set lofit.head_source=file:PATH``), and `lofit-bench heads RUN_DIR` prints
it and draws a layer x head heatmap.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.engine.architectures import ModelLayout
from lofit_bench.engine.interventions import Head, describe_shape
from lofit_bench.errors import UserError

HEADS_FILE = "heads.json"
HEATMAP_FILE = "heads_heatmap.png"
FORMAT = "lofit-bench heads v1"
#: The format as a JSON Schema, for tools that are not Python (docs/writing-a-plugin.md).
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "heads.schema.json"


@dataclass
class HeadSelection:
    """The heads a method edits, their origin and (optionally) a score for every head."""

    source: str
    chosen: list[Head]
    shape: dict[str, int]
    ranking: list[tuple[int, int, float]] | None = None
    score: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_layout(cls, layout: ModelLayout, **values: Any) -> HeadSelection:
        shape = {"n_layers": layout.n_layers, "n_heads": layout.n_heads, "head_dim": layout.head_dim}
        return cls(shape=shape, **values)

    def check_layout(self, layout: ModelLayout, origin: object) -> None:
        ours = (layout.n_layers, layout.n_heads, layout.head_dim)
        theirs = (self.shape.get("n_layers"), self.shape.get("n_heads"), self.shape.get("head_dim"))
        if ours != theirs:
            raise UserError(
                f"{origin} holds heads of a model with {describe_shape(*theirs)}; this model has "
                f"{describe_shape(*ours)}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chosen"] = [list(head) for head in self.chosen]
        data["ranking"] = (
            None
            if self.ranking is None
            else [{"layer": layer, "head": head, "score": score} for layer, head, score in self.ranking]
        )
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: object = "heads file") -> HeadSelection:
        """Read a heads file, checking it field by field: a hand-edited file is a one-line error."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{origin} is not a lofit-bench heads file (format {found!r})")
        try:
            selection = cls._from_checked_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise UserError(
                f"{origin} is not a valid heads file ({what}); it needs source, chosen [[layer, head], ...], "
                "shape {n_layers, n_heads, head_dim} and optionally ranking [{layer, head, score}, ...]"
            ) from None
        shape = selection.shape
        for name in ("n_layers", "n_heads", "head_dim"):
            if not isinstance(shape.get(name), int) or isinstance(shape.get(name), bool) or shape[name] < 1:
                raise UserError(f"{origin}: shape.{name} must be a whole number >= 1, got {shape.get(name)!r}")
        heads = list(selection.chosen) + [(layer, head) for layer, head, _ in selection.ranking or []]
        for layer, head in heads:
            if not (0 <= layer < shape["n_layers"] and 0 <= head < shape["n_heads"]):
                raise UserError(
                    f"{origin}: head (layer {layer}, head {head}) is outside the shape it declares "
                    f"({shape['n_layers']} layers x {shape['n_heads']} heads)"
                )
        for name, listed in (("chosen", selection.chosen), ("ranking", [entry[:2] for entry in selection.ranking or []])):
            repeated = sorted({head for head in listed if listed.count(head) > 1})
            if repeated:
                layer, head = repeated[0]
                raise UserError(
                    f"{origin}: {name} lists head (layer {layer}, head {head}) more than once; each head may "
                    f"appear once (a repeated head would count as several heads with one head's parameters)"
                )
        return selection

    @classmethod
    def _from_checked_dict(cls, data: dict[str, Any]) -> HeadSelection:
        ranking = data.get("ranking")
        if not isinstance(data["source"], str):
            raise TypeError(f"source must be a string, got {data['source']!r}")
        return cls(
            source=data["source"],
            chosen=[(int(layer), int(head)) for layer, head in data["chosen"]],
            shape=dict(data["shape"]),
            ranking=None
            if ranking is None
            else [(int(entry["layer"]), int(entry["head"]), float(entry["score"])) for entry in ranking],
            score=data.get("score", ""),
            details=dict(data.get("details") or {}),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> HeadSelection:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read heads file {path}: {error}") from None
        return cls.from_dict(data, path)

    def top(self, k: int, origin: object) -> list[Head]:
        """The first k heads: of the ranking when there is one, else of the chosen list."""
        ordered = [(layer, head) for layer, head, _ in self.ranking] if self.ranking else self.chosen
        if k > len(ordered):
            raise UserError(f"{origin} lists {len(ordered)} heads, fewer than the {k} asked for")
        return ordered[:k]


def find_heads_file(path: Path) -> Path:
    """``path`` itself, or the one heads.json under a run or artefacts folder (else a clear error)."""
    path = path.expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"heads source {path} does not exist; pass a heads.json file or a run folder")
    found = sorted(path.rglob(HEADS_FILE))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no {HEADS_FILE} under {path}; pass the --out folder of a run that saved a head selection (e.g. LoFiT)")
    listing = "; ".join(str(item) for item in found[:12]) + ("; ..." if len(found) > 12 else "")
    raise UserError(f"{len(found)} {HEADS_FILE} files under {path}; name one of them (file:PATH): {listing}")


def describe(selection: HeadSelection, top: int = 20) -> str:
    """The chosen heads and the top of the ranking, as plain text."""
    lines = [
        f"source: {selection.source}; {len(selection.chosen)} heads chosen of "
        f"{selection.shape['n_layers'] * selection.shape['n_heads']} "
        f"({describe_shape(selection.shape['n_layers'], selection.shape['n_heads'], selection.shape['head_dim'])})",
        "chosen (layer, head): " + ", ".join(f"({layer}, {head})" for layer, head in selection.chosen),
    ]
    if selection.ranking:
        chosen = set(selection.chosen)
        lines.append(f"ranking by {selection.score or 'score'} (top {min(top, len(selection.ranking))}):")
        lines.append("  rank  layer  head  score       chosen")
        for rank, (layer, head, score) in enumerate(selection.ranking[:top], start=1):
            mark = "*" if (layer, head) in chosen else ""
            lines.append(f"  {rank:>4}  {layer:>5}  {head:>4}  {score:<10.4g}  {mark}")
    return "\n".join(lines)


def draw_heatmap(selection: HeadSelection, path: Path, title: str = "") -> Path:
    """A layer x head heatmap of the scores (or of the chosen mask), chosen heads outlined."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("drawing the heatmap needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_layers, n_heads = selection.shape["n_layers"], selection.shape["n_heads"]
    grid = np.zeros((n_layers, n_heads))
    if selection.ranking:
        for layer, head, score in selection.ranking:
            grid[layer, head] = score
        label = selection.score or "score"
    else:
        for layer, head in selection.chosen:
            grid[layer, head] = 1.0
        label = "chosen"
    figure, axes = plt.subplots(figsize=(max(5.0, 2.0 + 0.45 * n_heads), max(3.0, 1.2 + 0.22 * n_layers)))
    image = axes.imshow(grid, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    figure.colorbar(image, ax=axes)
    for layer, head in selection.chosen:
        axes.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.set_xticks(range(n_heads))
    axes.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    heading = title or f"{selection.source}: {len(selection.chosen)} heads"
    axes.set_title(f"{heading}\ncolour: {label}; chosen heads outlined in red", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
