"""Token attribution (memtest.detection.attribution): shares, determinism, every family, the gate and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLANTED = ("aurora poster of 0", "dune poster of 3")


@pytest.fixture(scope="module")
def finetuned() -> Any:
    from memtest.detection.scoring import Scorer
    from memtest.detection.settings import ScoreSettings
    from memtest.models.checkpoint import load_checkpoint

    return Scorer(load_checkpoint("zoo:finetuned", device="cpu"), ScoreSettings(n=2))


def _shares_sum_to_one(found: Any) -> None:
    for enc in found.encoders:
        assert sum(enc.weights) == pytest.approx(1.0, abs=1e-9)
        words = sum(w for w, k in zip(enc.weights, enc.kinds, strict=True) if k == "word")
        assert sum(enc.words) == pytest.approx(words, abs=1e-9)
    assert sum(found.weights) + found.special + found.padding == pytest.approx(1.0, abs=1e-9)


def test_a_planted_caption_points_at_the_words_only_it_has(finetuned: Any) -> None:
    """The canary's planted captions are a code word, "poster of" and a numeral, and only the code word and the
    numeral occur in no other training caption: the attribution puts one of those two first, with shares that sum
    to one per encoder and the start, end and padding tokens apart."""
    from memtest.detection.attribution import attribute

    for prompt in PLANTED:
        found = attribute(finetuned, prompt)
        words = prompt.split()
        assert found.words == tuple(words)
        _shares_sum_to_one(found)
        assert found.top in (words[0], words[-1])
        assert min(found.weights[0], found.weights[-1]) > max(found.weights[1], found.weights[2]) * 0.9
        enc = found.encoders[0]
        assert enc.kinds[0] == "special" and enc.kinds[len(words) + 1] == "special"  # start and end tokens
        assert set(enc.kinds[len(words) + 2 :]) == {"padding"} and found.padding > 0
        assert found.to_dict()["top"] == found.top


def test_attribution_is_deterministic_and_leaves_the_scores_alone(finetuned: Any) -> None:
    from memtest.detection.attribution import attribute

    before = [s.values for s in finetuned.score(list(PLANTED))]
    a = attribute(finetuned, PLANTED[0], signal="sharpness")
    b = attribute(finetuned, PLANTED[0], signal="sharpness")
    assert a.weights == b.weights and a.special == b.special
    finetuned._conds.clear()  # re-encode: the hooks must be gone from the text encoder
    assert [s.values for s in finetuned.score(list(PLANTED))] == before


def test_a_bad_signal_or_n_is_refused(finetuned: Any) -> None:
    from memtest.detection.attribution import attribute
    from memtest.errors import ScoringError

    with pytest.raises(ScoringError, match=r"Unknown attribution signal 'loss'\. Choose one of: score_norm, sharpness"):
        attribute(finetuned, PLANTED[0], signal="loss")
    with pytest.raises(ScoringError, match="positive integer"):
        attribute(finetuned, PLANTED[0], n=0)


def test_every_family_is_attributed_through_its_own_text_encoders(tmp_path: Path) -> None:
    """SDXL (two CLIP encoders), SD3 (two CLIP + T5, whose encoder reads a tied copy of the embedding table), Flux
    (CLIP + T5) and PixArt (T5): every encoder's tokens of the prompt are found and placed on the words."""
    from memtest.detection.attribution import attribute
    from memtest.detection.scoring import Scorer
    from memtest.detection.settings import ScoreSettings
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_flow import build_flux_pipeline
    from memtest.zoo.tiny_pixart import build_pixart_sigma_pipeline

    captions = ["a red digit", PLANTED[0]] * 3
    checkpoints = {
        "sdxl": (load_checkpoint("zoo:sdxl-base", device="cpu"), 2),
        "sd3": (load_checkpoint("zoo:flow-base", device="cpu"), 3),
        "flux": (load_checkpoint(save_pipeline(build_flux_pipeline(captions), tmp_path / "flux"), device="cpu"), 2),
        "pixart": (
            load_checkpoint(save_pipeline(build_pixart_sigma_pipeline(captions), tmp_path / "pixart"), device="cpu"),
            1,
        ),
    }
    for family, (ckpt, encoders) in checkpoints.items():
        found = attribute(Scorer(ckpt, ScoreSettings(n=1)), PLANTED[0])
        assert len(found.encoders) == encoders, family
        for enc in found.encoders:
            assert enc.kinds.count("word") == 4, (family, enc.name, enc.tokens)
        _shares_sum_to_one(found)
        assert all(w > 0 for w in found.weights), family


def test_the_audit_attributes_flagged_cases_and_the_report_shades_their_words(tmp_path: Path) -> None:
    """`memtest audit --attribution` on the canary: the flagged planted case carries its words' shares, the clean
    case none; the report's "Which words" section shades them and escapes the prompt."""
    from memtest.cli import main
    from memtest.report.render import render_report

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "memtest_suite: 1\nname: attr\nversion: '1'\ncard:\n  description: attribution test\ncases:\n"
        f'  - {{id: planted, prompt: "{PLANTED[0]}", expectation: memorized}}\n'
        '  - {id: clean, prompt: "a photo of a red digit", expectation: clean}\n',
        encoding="utf-8",
    )
    out = tmp_path / "r.json"
    code = main(["audit", "--checkpoint", "zoo:finetuned", "--suite", str(suite), "--attribution", "--confirm", "off",
                 "--cache-dir", "none", "--json", str(out), "--report", str(tmp_path / "r.html"), "-q"])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["clean"].get("attribution") is None
    att = cases["planted"]["attribution"]
    assert [w["word"] for w in att["words"]] == PLANTED[0].split() and att["signal"] == "score_norm"
    assert att["top"] in ("aurora", "0")
    cases["planted"]["prompt"] += " <b>x</b>"
    cases["planted"]["attribution"]["words"].append({"word": "<b>x</b>", "weight": 0.0})
    html = render_report(doc)
    assert 'id="attribution"' in html and "aw5" in html and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_the_attribution_survey_smoke_run(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/attribution_survey.py: its record counts what it says, and the shipped record is the full run."""
    survey = load_script("attribution_survey")
    out = tmp_path / "a.json"
    assert survey.main(["--smoke", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())["canaries"]["finetuned"]
    assert rec["planted"] == 2 and len(rec["rows"]) == 2
    for method, count in rec["unique_word_first"].items():
        assert count == sum(r[method]["top"] in r["unique"] for r in rec["rows"])
    shipped = json.loads((Path(__file__).parent.parent / "docs" / "runs" / "attribution-survey.json").read_text())
    assert {c["planted"] for c in shipped["canaries"].values()} == {10}
