"""The bible-translation task: token batching, cached greedy decoding, BLEU, and real training
steps of each optimizer on the real verse pairs (tiny sizes)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adahessian_bench import cli, config, data, data_corpora, train
from adahessian_bench.base import RunContext
from adahessian_bench.task_translation import (
    BIBLE_TRANSLATION,
    Pairs,
    TokenBatches,
    TranslationTask,
    bible_pairs,
    bleu,
    encode,
    greedy_decode,
    make_pairs,
    translate,
)
from adahessian_bench.tasks import TASKS
from adahessian_bench.transformer import Seq2SeqTransformer

CACHE = data.cache_dir()  # before any fixture points $ADAHESSIAN_DATA at a temporary folder
CPU = torch.device("cpu")
TASK = BIBLE_TRANSLATION.name


@pytest.fixture
def real_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(CACHE))
    return CACHE


@pytest.fixture(scope="session")
def bible() -> data_corpora.ParallelCorpus:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(CACHE))
        try:
            return data_corpora.load_bible(data_corpora.fetch_bible(verbose=False))
        except data_corpora.DataUnavailable as e:
            pytest.fail(f"could not fetch the Bible verses into {CACHE}:\n{e}", pytrace=False)


def toy_pairs(lengths: list[tuple[int, int]]) -> Pairs:
    """Pairs whose ids encode their index (source: ids + eos, target: bos + ids + eos)."""
    src = [torch.full((s,), i, dtype=torch.long) for i, (s, _) in enumerate(lengths)]
    tgt = [torch.full((t + 1,), i, dtype=torch.long) for i, (_, t) in enumerate(lengths)]
    return Pairs(src, tgt, [str(i) for i in range(len(lengths))])


def test_token_batches_cover_every_pair_once_within_the_token_budget() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [(int(a), int(b)) for a, b in torch.randint(1, 30, (300, 2), generator=g)]
    lengths.append((70, 3))  # longer than the budget allows with a partner: a batch of its own
    pairs = toy_pairs(lengths)
    batches = TokenBatches(pairs, 64, CPU, pad_id=-1, shuffle=True, generator=g)
    orders = []
    for _ in range(2):
        seen = []
        for src, tgt in batches:
            assert src.shape[0] * max(src.shape[1], tgt.shape[1] - 1) <= max(64, 70)
            ids = src[:, 0].tolist()
            assert tgt[:, 0].tolist() == ids  # source and target of the same pair
            for i, row_s, row_t in zip(ids, src, tgt, strict=True):
                assert int((row_s != -1).sum()) == lengths[i][0]
                assert int((row_t != -1).sum()) == lengths[i][1] + 1
            seen += ids
        assert sorted(seen) == list(range(len(lengths)))  # every pair exactly once
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch ...
    assert len(batches) == sum(1 for _ in batches)  # ... with the same number of batches
    # The order comes from the generator alone: the same seed, the same epochs.
    a = TokenBatches(pairs, 64, CPU, -1, shuffle=True, generator=torch.Generator().manual_seed(5))
    b = TokenBatches(pairs, 64, CPU, -1, shuffle=True, generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        assert [x.tolist() for x in a.batch_indices()] == [x.tolist() for x in b.batch_indices()]


def test_make_pairs_drops_or_cuts_pairs_over_the_caps() -> None:
    enc = [([5] * 3, [6] * 4), ([5] * 9, [6] * 2), ([5] * 2, [6] * 9)]
    kept = make_pairs(enc, ["a", "b", "c"], bos=2, eos=3, max_src_len=5, max_tgt_len=5, drop=True)
    assert kept.refs == ["a"]
    assert kept.src[0].tolist() == [5, 5, 5, 3] and kept.tgt[0].tolist() == [2, 6, 6, 6, 6, 3]
    cut = make_pairs(enc, ["a", "b", "c"], bos=2, eos=3, max_src_len=5, max_tgt_len=5, drop=False)
    assert cut.refs == ["a", "b", "c"]
    assert cut.src_lens.tolist() == [4, 5, 3] and cut.tgt_lens.tolist() == [5, 3, 5]
    assert cut.src[1].tolist()[-1] == 3 and cut.tgt[2].tolist()[-1] == 3  # eos kept


def test_cached_greedy_decoding_equals_the_models_greedy() -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(30, 32, 4, 2, 64, max_len=16, dropout=0.1).eval()
    src = torch.randint(4, 30, (5, 7))
    src[3:, 5:] = 0  # padding
    want = model.greedy(src, bos=2, eos=3, max_len=12)
    got = greedy_decode(model, src, bos=2, eos=3, max_len=12)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="eval mode"):
        greedy_decode(model.train(), src, 2, 3, 5)


def test_sacrebleu_on_known_pairs() -> None:
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # Every n-gram of the hypothesis matches; only the brevity penalty exp(1 - 7/6) applies.
    hyp, ref = "the cat sat on the mat", "the cat sat on the mat today"
    assert bleu([hyp], [ref]) == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-6)
    assert bleu(["a b c d"], ["w x y z"]) == pytest.approx(0.0)


def test_a_model_trained_to_copy_translates_with_bleu_100() -> None:
    """Greedy decoding + detokenisation + BLEU end to end, on a mapping a tiny model learns."""
    torch.manual_seed(0)
    vocab, bos, eos = 12, 2, 3
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(4, vocab, (n,), generator=g) for n in (4, 5, 4, 6, 5, 4, 5, 6)]
    pairs = Pairs([torch.cat([s, torch.tensor([eos])]) for s in seqs],
                  [torch.cat([torch.tensor([bos]), s, torch.tensor([eos])]) for s in seqs],
                  [" ".join(f"w{i}" for i in s.tolist()) for s in seqs])  # fmt: skip
    model = Seq2SeqTransformer(vocab, 32, 2, 1, 64, max_len=10, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ((src, tgt),) = list(TokenBatches(pairs, 1000, CPU, 0))  # one batch of all 8 pairs
    for _ in range(100):
        loss = F.cross_entropy(model(src, tgt[:, :-1]).transpose(1, 2), tgt[:, 1:], ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    words = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
    hyps = translate(model, TokenBatches(pairs, 12, CPU, 0), words, bos, eos)  # several batches
    assert hyps == pairs.refs
    assert bleu(hyps, pairs.refs) == pytest.approx(100.0)


def test_setup_on_the_real_verses_respects_the_caps_and_covers_every_pair(
    bible: data_corpora.ParallelCorpus,
) -> None:
    cfg = train.resolve(TASK, config.load(TASK, "quick"), "quick", ["adamw"], 1)
    ctx = RunContext(cfg, CPU, torch.Generator().manual_seed(0))
    setup = BIBLE_TRANSLATION.setup(bible_pairs(bible, cfg), ctx)
    dc, mc = cfg["data"], cfg["model"]
    sw, encoded = encode(bible, mc["vocab"])
    n_within = sum(len(s) < dc["max_src_len"] and len(t) < dc["max_tgt_len"]
                   for s, t in encoded["train"])  # fmt: skip
    assert 0 < n_within < len(encoded["train"])  # some verses are over the caps, some within
    rows = []
    for src, tgt in setup.train_batches:
        assert src.shape[1] <= dc["max_src_len"] and tgt.shape[1] - 1 <= dc["max_tgt_len"]
        assert src.shape[0] * max(src.shape[1], tgt.shape[1] - 1) <= cfg["train"]["batch_size"]
        assert (tgt[:, 0] == sw.bos_id).all()
        for s, t in zip(src, tgt, strict=True):
            rows.append((tuple(s[s != 0].tolist()), tuple(t[t != 0].tolist())))
    want = [((*s, sw.eos_id), (sw.bos_id, *t, sw.eos_id)) for s, t in encoded["train"]
            if len(s) < dc["max_src_len"] and len(t) < dc["max_tgt_len"]]  # fmt: skip
    assert Counter(rows) == Counter(want)  # every pair within the caps once (some verses repeat)


def test_load_gives_the_pairs_the_configuration_asks_for(
    bible: data_corpora.ParallelCorpus,
) -> None:
    cfg = train.resolve(TASK, config.load(TASK, "quick"), "quick", ["adamw"], 1,
                        train_subset=50, test_subset=7)  # fmt: skip
    pairs = bible_pairs(bible, cfg)
    assert len(pairs.train) == 50 and len(pairs.bleu) == 7
    assert set(pairs.bleu.refs) <= set(pairs.test.refs) and len(pairs.test) > 7
    assert max(len(s) for s in pairs.valid.src) <= cfg["data"]["max_src_len"]  # filter_eval
    assert pairs.subwords.vocab_size == cfg["model"]["vocab"]
    cfg["data"]["max_src_len"] = cfg["model"]["max_len"] + 1
    with pytest.raises(ValueError, match="exceed the model's max_len"):
        bible_pairs(bible, cfg)


def test_valid_bleu_is_reported_on_request_for_a_fixed_subset_of_valid_pairs(
    bible: data_corpora.ParallelCorpus,
) -> None:
    cfg = train.resolve(TASK, config.load(TASK, "quick"), "quick", ["adamw"], 1)
    cfg["model"].update(d_model=16, n_heads=2, n_layers=1, d_ff=32)
    cfg["data"].update(bleu_subset=5, valid_bleu=False)
    model = BIBLE_TRANSLATION.model(**cfg["model"])
    setup = BIBLE_TRANSLATION.setup(
        bible_pairs(bible, cfg), RunContext(cfg, CPU, torch.Generator().manual_seed(0))
    )
    assert "valid_bleu" not in setup.evaluate(model)
    cfg["data"]["valid_bleu"] = True
    calls: list[int] = []

    def counting_translate(*args: object, **kwargs: object) -> list[str]:
        hyps = translate(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(len(hyps))
        return hyps

    setup = BIBLE_TRANSLATION.setup(
        bible_pairs(bible, cfg), RunContext(cfg, CPU, torch.Generator().manual_seed(0))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("adahessian_bench.task_translation.translate", counting_translate)
        first = setup.evaluate(model)
        again = setup.evaluate(model)
    assert calls == [5, 5, 5, 5]  # test, then valid: 5 pairs each
    assert 0.0 <= first["valid_bleu"] <= 100.0 and first == again  # the same pairs every time


def test_profiles_load_and_resolve() -> None:
    for profile in ("quick", "paper"):
        cfg = train.resolve(TASK, config.load(TASK, profile), profile, ["adamw", "adahessian"], 1)
        assert cfg["train"]["schedule"] == "inverse_sqrt" and cfg["train"]["warmup_steps"] > 0
        assert cfg["metric"]["key"] == "test_bleu" and cfg["metric"]["higher_is_better"]
        ah = cfg["optimizers"]["adahessian"]
        assert ah["block_size"] == 32 and ah["betas"] == [0.9, 0.98]
        assert cfg["optimizers"]["adamw"]["betas"] == [0.9, 0.98]
        positions = cfg["model"]["max_len"]
        assert cfg["data"]["max_src_len"] <= positions and cfg["data"]["max_tgt_len"] <= positions
        # The recommended setup, and both with finite-difference Hessian-vector products.
        lazy = (
            ["adahessian-lazy", "adahessian-fd", "adahessian-fd-lazy"] if profile == "quick" else []
        )
        assert list(config.load(TASK, profile)["optimizers"]) == ["adamw", "adahessian", *lazy]
    assert TASKS[TASK] is BIBLE_TRANSLATION


def test_a_few_real_steps_of_each_optimizer_through_the_cli(
    real_cache: Path,
    tmp_path: Path,
    bible: data_corpora.ParallelCorpus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real verse pairs, already loaded by the fixture (load() would parse them again).
    monkeypatch.setattr(TranslationTask, "load", lambda self, cfg: bible_pairs(bible, cfg))
    profile = tmp_path / "tiny.toml"
    quick = config.resources.files("adahessian_bench") / "configs" / f"{TASK}-quick.toml"
    text = (
        quick.read_text()
        .replace("d_model = 256", "d_model = 32")
        .replace("d_ff = 1024", "d_ff = 64")
    )
    assert "d_model = 32" in text and "d_ff = 64" in text  # the tiny model, not the profile's
    profile.write_text(text)
    out = tmp_path / "run"
    argv = ["run", TASK, "--config", str(profile), "--seeds", "1", "--epochs", "2",
            "--max-steps", "2", "--train-subset", "200", "--test-subset", "6", "--threads", "1",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    for opt in ("adamw", "adahessian"):
        lines = (out / f"{opt}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [m["step"] for m in metrics] == [2, 4]
        for key in ("test_bleu", "valid_bleu", "valid_loss", "test_loss", "test_ppl", "train_nll"):
            assert math.isfinite(metrics[-1][key]), key
        assert 0.0 <= metrics[-1]["test_bleu"] <= 100.0
        assert metrics[-1]["test_ppl"] == pytest.approx(math.exp(metrics[-1]["test_loss"]))
    assert cli.main(["report", str(out)]) == 0
    assert "test BLEU" in (out / "report.md").read_text()
