"""``verify plot`` figures (titles, unchecked examples, integer steps, the ResNet growth bound)
and the conventions of both CLIs' ``--help`` (defaults shown) and ``bounds --norm``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from models import ResNet
from models.cli import build_parser as models_parser
from models.train import save_checkpoint
from verify.cli import build_parser as verify_parser
from verify.cli import main
from verify.plots import PlotWarning, plot_run, run_figures

COVERS = "fixed-step surrogate, not the deployed solver"


def _record(i: int, correct: bool, empirical: float | None, growth: list[float] | None,
            **extra: Any) -> dict[str, Any]:
    """One line of results.jsonl as ``verify.run.certify_run`` writes it."""
    methods = {m: {"radius": 0.0 if not correct else 0.01 * (i + 1) * f, "upper": 0.02 * (i + 1),
                   "evaluations": 5, "seconds": 0.1, "margin0": 1.5, "margins": [[0.0, 1.5]]}
               for m, f in (("ibp", 0.5), ("crown", 1.0))}
    return {"index": i, "label": 3, "pred": 3 if correct else 5, "correct": correct, "empirical": empirical,
            "methods": methods, "ratio": {m: None for m in methods}, "unsound": [], "growth": growth,
            "seconds": 0.3, "max_rss_mb": 100.0, **extra}


def _run_dir(tmp_path: Path, records: list[dict[str, Any]], model: str = "resnet-tiny", **config: Any) -> Path:
    out = tmp_path / "run"
    out.mkdir(parents=True)
    cfg = {"model": model, "arch": "resnet", "norm": "inf", "methods": ["ibp", "crown"], "n": len(records),
           "eps": [0.01], "seed": 0, "attack": True, "dataset": "mnist-t10k/test", **config}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _tiny_resnet(tmp_path: Path) -> tuple[ResNet, Path]:
    torch.manual_seed(0)
    model = ResNet(channels=2, n_blocks=3, step=0.5, input_size=8).eval()
    return model, save_checkpoint(tmp_path / "resnet-tiny", model, {})


def _texts(fig: Any) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _title(fig: Any) -> str:
    return "\n".join(ax.get_title() for ax in fig.axes)


GROWTH = [1.2, 1.5, 1.9]
RECORDS = [
    _record(0, True, 0.05, GROWTH),
    _record(1, True, 0.08, [1.1, 1.3, 1.4], certificate_covers=COVERS),
    _record(2, True, None, None),  # the attack found nothing: unchecked
    _record(3, False, None, None),  # misclassified
]


def test_every_figure_names_model_norm_methods_n_and_what_the_certificate_covers(tmp_path: Path) -> None:
    model, pt = _tiny_resnet(tmp_path)
    figs = run_figures(_run_dir(tmp_path, RECORDS, model=str(pt)))
    assert set(figs.figures) == {"scatter.png", "cdf.png", "growth.png"}
    for name, fig in figs.figures.items():
        title = _title(fig)
        for part in (str(pt), "ℓ∞", "ibp, crown", "n = 4", f"certificate covers: {COVERS}"):
            assert part in title, (name, title)


def test_without_certificate_covers_no_covers_line(tmp_path: Path) -> None:
    recs = [{k: v for k, v in r.items() if k != "certificate_covers"} for r in RECORDS]
    figs = run_figures(_run_dir(tmp_path, recs, norm="2", n=10))
    for fig in figs.figures.values():
        assert "covers" not in _title(fig) and "ℓ2" in _title(fig) and "n = 4 of 10" in _title(fig)


def test_unchecked_examples_are_written_in_the_scatter_and_warned(tmp_path: Path) -> None:
    out = _run_dir(tmp_path, RECORDS)
    figs = run_figures(out)
    note = "1 of 3 examples unchecked: the attack found no adversarial example"
    assert note in _texts(figs.figures["scatter.png"])
    assert figs.warnings == (note,)
    cdf = {ln.get_label(): ln for ln in figs.figures["cdf.png"].axes[0].lines}
    attack = cdf["attack (empirical, 1 unchecked)"]
    assert max(attack.get_ydata()) == pytest.approx(2 / 3)  # the unbroken example never enters the curve
    assert max(cdf["crown"].get_ydata()) == pytest.approx(1.0)
    with pytest.warns(PlotWarning, match="1 of 3 examples unchecked"):
        plot_run(out)


def test_no_unchecked_note_when_every_correct_example_was_attacked(tmp_path: Path) -> None:
    figs = run_figures(_run_dir(tmp_path, [RECORDS[0], RECORDS[1], RECORDS[3]]))
    assert figs.warnings == () and "unchecked" not in _texts(figs.figures["scatter.png"])


def test_an_empty_scatter_says_so(tmp_path: Path) -> None:
    figs = run_figures(_run_dir(tmp_path, [_record(0, True, None, None), _record(1, True, None, None)]))
    text = _texts(figs.figures["scatter.png"])
    assert "empty: no example has both an empirical and a certified radius" in text
    assert "2 of 2 examples unchecked" in text
    assert len(figs.warnings) == 2 and any("empty" in w for w in figs.warnings)
    no_attack = run_figures(_run_dir(tmp_path / "b", [_record(0, True, None, None)], attack=False))
    assert "unchecked: the run had no attack" in _texts(no_attack.figures["scatter.png"])


def test_resnet_growth_draws_the_product_bound_on_integer_steps(tmp_path: Path) -> None:
    from lipbound import network_bound

    model, pt = _tiny_resnet(tmp_path)
    fig = run_figures(_run_dir(tmp_path, RECORDS, model=str(pt))).figures["growth.png"]
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_label().startswith("symbolic growth bound")]
    rows = {r.name: r.upper for r in network_bound(model, "2").rows}
    factors = [rows[f"block{k}"] for k in range(3)]
    assert all(f > 1 for f in factors)
    expected = [math.prod(factors[:k + 1]) for k in range(3)]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx(expected, rel=1e-12)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_growth_without_a_bound_says_why(tmp_path: Path) -> None:
    fig = run_figures(_run_dir(tmp_path, RECORDS, model="no-such-model")).figures["growth.png"]
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert any(lb.startswith("symbolic bound n/a: unknown model 'no-such-model'") for lb in labels), labels


def test_plot_cli_prints_paths_and_one_warning_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, pt = _tiny_resnet(tmp_path)
    out = _run_dir(tmp_path, RECORDS, model=str(pt))
    assert main(["plot", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(Path(p).name for p in captured.out.split()) == ["cdf.png", "growth.png", "scatter.png"]
    assert all((out / n).stat().st_size > 1000 for n in ("cdf.png", "growth.png", "scatter.png"))
    assert captured.err.strip().splitlines() == [
        "warning: 1 of 3 examples unchecked: the attack found no adversarial example"]


# ------------------------------------------------------------------ --help and defaults


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_parsers(sub)
    return out


@pytest.mark.parametrize("build", [models_parser, verify_parser])
def test_every_help_shows_the_defaults(build: Any) -> None:
    parsers = _all_parsers(build())
    assert len(parsers) > 4
    for p in parsers:
        text = p.format_help()  # also proves every help string with '%' still formats
        for action in p._actions:
            shown = action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
            if shown:
                assert f"(default: {action.default})" in " ".join(text.split()), (p.prog, action.dest)


def test_help_exits_0_and_keeps_percent_signs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["certify", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "i % N == k-1" in text and "(default: crown)" in text and "(default: 100)" in text


def test_bounds_norm_defaults_to_inf_like_certify() -> None:
    parser = verify_parser()
    defaults = {cmd: parser.parse_args([cmd, "--model", "ode"]).norm for cmd in ("bounds", "certify")}
    assert defaults == {"bounds": "inf", "certify": "inf"}
