"""curriculum.py: the schedules, the exact mixture, resumability and rank-disjoint reading."""
import json

import numpy as np
import pytest

import curriculum
from curriculum import CurriculumError, Mixer, make_schedule

MANIFEST = {"sources": {
    "en": {"kind": "mono", "lang": "en", "train": {"tokens": 60_000}},
    "zh": {"kind": "mono", "lang": "zh", "train": {"tokens": 30_000}},
    "th": {"kind": "mono", "lang": "th", "train": {"tokens": 10_000}},
    "bi.en-th": {"kind": "bilingual", "lang": "th", "train": {"tokens": 5_000}},
}}


def shards():
    # every source's tokens are distinct ranges, so a row tells where it came from
    return {name: np.arange(i * 100_000, i * 100_000 + e["train"]["tokens"])
            for i, (name, e) in enumerate(MANIFEST["sources"].items())}


def test_polylm_schedule_30_then_60_percent_non_english_with_bilingual():
    s1, s2 = make_schedule("polylm", MANIFEST, stage2_frac=0.25)
    assert (s1.frac, s2.frac) == (0.75, 0.25)
    assert s1.weights["en"] == pytest.approx(0.7) and "bi.en-th" not in s1.weights
    assert s1.weights["zh"] == pytest.approx(0.3 * 3 / 4)          # natural proportion among non-English
    assert 1 - s2.weights["en"] == pytest.approx(0.6) and s2.weights["bi.en-th"] == pytest.approx(0.1)
    for st in (s1, s2):
        assert sum(st.weights.values()) == pytest.approx(1.0)


def test_ablation_schedules():
    (nat,) = make_schedule("none", MANIFEST)
    assert nat.weights == pytest.approx({"en": 0.6, "zh": 0.3, "th": 0.1})
    (uni,) = make_schedule("uniform", MANIFEST)
    assert uni.weights == pytest.approx({"en": 1 / 3, "zh": 1 / 3, "th": 1 / 3})
    (s1,) = make_schedule("stage1", MANIFEST)
    assert s1.weights == pytest.approx(make_schedule("polylm", MANIFEST)[0].weights)
    with pytest.raises(CurriculumError, match="unknown curriculum"):
        make_schedule("polylm2", MANIFEST)


def test_temperature_alpha_lifts_small_languages():
    (flat,) = make_schedule("x", MANIFEST, stages=[{"frac": 1, "non_en": 0.4, "alpha": 0.0}])
    assert flat.weights["zh"] == pytest.approx(flat.weights["th"]) == pytest.approx(0.2)
    (half,) = make_schedule("x", MANIFEST, stages=[{"frac": 1, "non_en": 0.4, "alpha": 0.5}])
    assert half.weights["zh"] / half.weights["th"] == pytest.approx(3 ** 0.5)


def test_explicit_weights_by_language_or_source():
    (st,) = make_schedule("x", MANIFEST, stages=[{"frac": 1, "weights": {"en": 0.5, "th": 0.25, "bi.en-th": 0.25}}])
    assert st.weights == pytest.approx({"en": 0.5, "th": 0.25, "bi.en-th": 0.25})


@pytest.mark.parametrize("stages, message", [
    ([{"frac": 1, "weights": {"en": 0.5, "zh": 0.4}}], "sum to 0.9"),
    ([{"frac": 1, "weights": {"en": 0.5, "ko": 0.5}}], "'ko' has no shard"),
    ([{"frac": 0.0, "non_en": 0.3}, {"frac": 1.0, "non_en": 0.3}], "frac=0.0"),
    ([{"frac": 0.5, "non_en": 0.3}], "sum to 0.5"),
    ([{"frac": 1, "non_en": 0.2, "bilingual": 0.3}], "exceed non_en"),
    ([{"frac": 1, "non_en": 0.5, "hq": 0.1}], "high-quality sources, but the data has none"),
])
def test_bad_schedules_fail_with_one_clear_error(stages, message):
    with pytest.raises(CurriculumError, match=message):
        make_schedule("x", MANIFEST, stages=stages)


def test_realised_mixture_follows_target_within_one_point_per_1000_rows():
    stages = make_schedule("polylm", MANIFEST, stage2_frac=0.5)
    m = Mixer(shards(), stages, total_rows=4000, block_size=8)
    for stage in stages:
        for _ in range(2):          # two windows of 1000 rows per stage
            _, _, names = m.next_batch(1000)
            for src, w in stage.weights.items():
                assert abs(names.count(src) / 1000 - w) <= 0.01


def test_rows_are_consecutive_tokens_and_targets_shift_by_one():
    m = Mixer(shards(), make_schedule("none", MANIFEST), total_rows=10, block_size=8)
    x, y, names = m.next_batch(4)
    assert x.shape == y.shape == (4, 8)
    assert (y[:, :-1] == x[:, 1:]).all() and (np.diff(x, axis=1) == 1).all()


def test_resume_gives_exactly_the_batches_of_an_unbroken_run():
    stages = make_schedule("polylm", MANIFEST, stage2_frac=0.5)
    full = Mixer(shards(), stages, total_rows=400, block_size=32)
    ref = [full.next_batch(10) for _ in range(40)]
    a = Mixer(shards(), stages, total_rows=400, block_size=32)
    first = [a.next_batch(10) for _ in range(20)]
    state = a.state_dict()
    b = Mixer(shards(), stages, total_rows=400, block_size=32)
    b.load_state_dict(state)
    second = [b.next_batch(10) for _ in range(20)]
    for (x1, y1, n1), (x2, y2, n2) in zip(ref, first + second):
        assert (x1 == x2).all() and (y1 == y2).all() and n1 == n2


def test_ranks_read_disjoint_rows_that_together_are_the_single_process_batch():
    stages = make_schedule("polylm", MANIFEST, stage2_frac=0.5)
    one = Mixer(shards(), stages, total_rows=2000, block_size=64)
    two = [Mixer(shards(), stages, total_rows=2000, block_size=64, rank=r, world_size=2) for r in range(2)]
    for _ in range(200):                       # th wraps around
        x, _, names = one.next_batch(10)
        parts = [m.next_batch(5) for m in two]
        assert sorted(map(tuple, x)) == sorted(map(tuple, np.concatenate([p[0] for p in parts])))
        assert not set(map(tuple, parts[0][0])) & set(map(tuple, parts[1][0]))
    assert one.epoch["th"] >= 1 and one.epoch == two[0].epoch == two[1].epoch


def test_source_too_small_for_block_is_refused():
    with pytest.raises(CurriculumError, match="too few tokens"):
        Mixer(shards(), make_schedule("none", MANIFEST), total_rows=10, block_size=20_000)


def test_linear_ramp_blends_the_stages_around_the_boundary():
    stages = make_schedule("polylm", MANIFEST, stage2_frac=0.5)
    m = Mixer(shards(), stages, total_rows=1000, block_size=8, ramp_rows=200)
    en = [m.weights_at(r)["en"] for r in range(1000)]
    assert en[0] == pytest.approx(0.7) and en[999] == pytest.approx(0.4)
    assert en[399] == pytest.approx(0.7) and en[600] == pytest.approx(0.4)
    assert en[500] == pytest.approx(0.55, abs=0.01)
    assert all(a >= b - 1e-12 for a, b in zip(en, en[1:]))           # monotone from 70% to 40% English


def test_repeating_a_source_many_times_warns_once():
    msgs = []
    m = Mixer(shards(), make_schedule("uniform", MANIFEST), total_rows=10_000, block_size=100, repeat_warn=3,
              log=msgs.append)
    m.next_batch(3000)
    assert len([x for x in msgs if "'th'" in x]) == 1 and m.epoch["th"] >= 3


def test_plot_and_compare_from_metrics(tmp_path):
    for name, cur in (("a", "polylm"), ("b", "none")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"train": {"curriculum": cur}}))
        recs = [{"step": s, "mix": {"en": 0.7, "zh": 0.3}, "target": {"en": 0.7, "zh": 0.3}} for s in (10, 20)]
        recs += [{"step": 20, "val_bpb": {"en": 2.0, "zh": 3.0 if cur == "polylm" else 3.5}}]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert curriculum.plot_mixture(tmp_path / "a").exists()
    table = curriculum.compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "ablation.png")
    assert "| a (polylm) | 2.000 | 3.000 | 2.500 |" in table and "| b (none) | 2.000 | 3.500 |" in table
    assert (tmp_path / "ablation.png").exists()


def test_a_seed_changes_where_every_source_starts_reading_the_same_on_every_rank():
    streams = {"en": np.arange(10_000), "th": np.arange(10_000, 13_000)}
    (st,) = make_schedule("x", {"sources": {n: {"kind": "mono", "lang": n, "train": {"tokens": len(v)}}
                                            for n, v in streams.items()}}, stages=[{"frac": 1, "non_en": 0.5}])
    first = lambda seed, **kw: Mixer(streams, [st], 40, 8, seed=seed, **kw).next_batch(4)[0]   # noqa: E731
    assert (first(1) == first(1)).all() and not (first(1) == first(2)).all()
    assert (first(None)[0] == np.arange(8)).all()                      # no seed: from the start, as before
    m = Mixer(streams, [st], 40, 8, seed=7)
    assert 0 <= m.start["en"] < 10_000 - 8 and m.start != Mixer(streams, [st], 40, 8, seed=8).start
    one = Mixer(streams, [st], 40, 8, seed=3).next_batch(4)[0]
    two = [Mixer(streams, [st], 40, 8, seed=3, rank=r, world_size=2).next_batch(2)[0] for r in (0, 1)]
    assert (np.stack([two[0][0], two[1][0], two[0][1], two[1][1]]) == one).all()
