"""train_reranker on a tiny BEIR set: the loss falls, the saved folder is a plain HF cross-encoder that
bgekit.Reranker and sentence-transformers' CrossEncoder load with the same scores, and saving is atomic."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bgekit import models
from bgekit.data import load_training_jsonl, save_beir
from bgekit.reranker import Reranker
from bgekit.training.reranker import (
    TRAIN_INFO_FILE,
    RerankerTrainArgs,
    build_reranker_examples,
    group_loss,
    train_reranker,
)

DOCS = {
    "d1": ("Yellow tomato leaves", "Lower leaves of a tomato turn yellow when the plant lacks nitrogen."),
    "d2": ("Leggy seedlings", "Seedlings stretch and flop over when light is too weak; move them closer to a lamp."),
    "d3": ("Watering cacti", "Water a cactus only when the soil is completely dry, every two to three weeks."),
    "d4": ("Fungus gnats", "Small black flies over potting soil are fungus gnats; let the top layer dry out."),
    "d5": ("Basil care", "Pinch basil tips above a pair of leaves so the plant branches instead of flowering."),
    "d6": ("Repotting orchids", "Orchids grow in bark, not soil; repot them after flowering."),
    "d7": ("Overwatering", "Too much water suffocates roots; leaves droop and yellow though the soil is wet."),
    "d8": ("Aphids", "Green aphids cluster on new shoots; rinse them off with water or soapy spray."),
    "d9": ("Light for herbs", "Herbs on a windowsill need six hours of direct sun; a south window works best."),
    "d10": ("Tomato support", "Tomato plants need deep watering twice a week and a stake to hold the fruit."),
    "d11": ("Slugs", "Slugs eat holes in lettuce at night; beer traps and copper tape keep them away."),
    "d12": ("Compost", "A compost heap needs a mix of green and brown material and regular turning."),
}
QUERIES = {
    "q1": "why is my tomato plant going yellow",
    "q2": "baby plants tall and floppy",
    "q3": "how often do I water my cactus",
    "q4": "tiny flies in my plant pot",
    "q5": "bugs on new growth of my pepper",
    "q6": "how to make basil bushy",
    "q7": "what goes into a compost pile",
    "q8": "holes in my lettuce leaves",
}
QRELS = {"q1": {"d1": 2, "d7": 1}, "q2": {"d2": 2}, "q3": {"d3": 2}, "q4": {"d4": 2}, "q5": {"d8": 2},
         "q6": {"d5": 2}, "q7": {"d12": 2}, "q8": {"d11": 2}}

FAST = dict(train_group_size=4, per_device_train_batch_size=4, max_len=64, learning_rate=1e-4,
            warmup_ratio=0.0, disable_tqdm=True, use_cpu=True, seed=7)


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    save_beir(root, {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}, QUERIES, {"train": QRELS})
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, beir_dir):
    out = tmp_path_factory.mktemp("runs") / "reranker"
    return train_reranker(output_dir=str(out), data_dir=str(beir_dir), hard_negatives="bm25",
                          num_train_epochs=8, **FAST)


def test_group_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    want = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (2 + math.e))) / 2
    assert float(group_loss(logits)) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="group"):
        group_loss(torch.zeros(3, 1))


def test_examples_exclude_judged_documents(beir_dir):
    examples, pool = build_reranker_examples(beir_dir, "train", hard_negatives="bm25", negative_range=(0, 5))
    assert len(examples) == len(QRELS) and len(pool) == len(DOCS)
    text = {d: f"{t} {x}" for d, (t, x) in DOCS.items()}
    by_query = {e.query: e for e in examples}
    for qid, judged in QRELS.items():
        ex = by_query[QUERIES[qid]]
        assert ex.pos == [text[d] for d in sorted(judged, key=lambda d: -judged[d])]  # best grade first
        assert len(ex.neg) <= 5 and not set(ex.neg) & {text[d] for d in judged}
        # the negatives are BM25's top hits in its order, judged documents skipped
        from bgekit.retrieval import BM25Retriever

        hits = BM25Retriever({d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}).search([QUERIES[qid]], k=12)[0]
        assert ex.neg == [text[d] for d, _ in hits if d not in judged][:5]
    assert sum(len(e.neg) for e in examples) > 0


def test_is_a_trainer_and_logs_through_it():
    from transformers import Trainer, TrainingArguments

    from bgekit.training.reranker import RerankerTrainer

    assert issubclass(RerankerTrainer, Trainer) and "compute_loss" in RerankerTrainer.__dict__
    assert isinstance(RerankerTrainArgs(output_dir="x"), TrainingArguments)


def test_a_negative_never_holds_a_positive():
    import numpy as np

    from bgekit.training.data import TrainExample, sample_group

    ex = TrainExample("q", ["answer", "other answer"], ["answer", "n1", "other answer", "n2"])
    pool = ["answer", "other answer", "r1", "r2", "r3"]
    for seed in range(30):
        group = sample_group(ex, np.random.default_rng(seed), 4, pool)
        assert group[0] in ex.pos and not set(group[1:]) & set(ex.pos) and len(set(group)) == 4


def test_loss_decreases_and_history_kept(trained):
    assert trained.n_steps == len(trained.losses) == 16  # 8 queries / 4 per step x 8 epochs
    state = json.loads((trained.output_dir / "trainer_state.json").read_text())
    assert [h["loss"] for h in state["log_history"] if "loss" in h] == pytest.approx(trained.losses)
    first, last = sum(trained.losses[:3]) / 3, sum(trained.losses[-3:]) / 3
    assert first > 1.0  # about log(4) with an untrained head
    assert last < 0.6 * first
    info = json.loads((trained.output_dir / TRAIN_INFO_FILE).read_text())
    assert info["losses"] == pytest.approx(trained.losses) and info["stamp"] == trained.stamp


def test_saved_folder_is_a_reranker(trained):
    folder = trained.output_dir
    meta = json.loads((folder / models.METADATA_FILE).read_text())
    assert meta["kind"] == "reranker"
    assert models.get_spec(folder).kind == "reranker"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_labels"] == 1 if "num_labels" in cfg else len(cfg["id2label"]) == 1
    assert any("SequenceClassification" in a for a in cfg["architectures"])


def test_trained_model_ranks_positives_high(trained):
    rr = Reranker(trained, device="cpu")  # the result works as a path
    text = {d: f"{t} {x}" for d, (t, x) in DOCS.items()}
    near_top = 0
    for qid, judged in QRELS.items():
        best = max(judged, key=judged.get)
        ranked = [r["text"] for r in rr.rerank(QUERIES[qid], list(text.values()))]
        near_top += ranked.index(text[best]) < 3
    # an untrained head puts the answer in the top 3 of 12 for about 2 of 8 queries
    assert near_top >= 6


def test_crossencoder_loads_with_same_scores(trained):
    from sentence_transformers import CrossEncoder

    pairs = [(QUERIES[q], f"{DOCS[d][0]} {DOCS[d][1]}") for q in QUERIES for d in ("d1", "d4", "d9")]
    rr = Reranker(trained, device="cpu")
    ce = CrossEncoder(str(trained.output_dir), device="cpu")
    raw = ce.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    torch.testing.assert_close(torch.tensor(rr.compute_score(pairs)), torch.tensor(raw), atol=1e-5, rtol=0)
    prob = ce.predict(pairs, show_progress_bar=False)  # CrossEncoder's default for one label: sigmoid
    torch.testing.assert_close(torch.tensor(rr.compute_score(pairs, normalize=True)), torch.tensor(prob),
                               atol=1e-6, rtol=0)


def test_reuse_same_stamp_skips_training(trained, beir_dir):
    again = train_reranker(output_dir=str(trained.output_dir), data_dir=str(beir_dir), hard_negatives="bm25",
                           num_train_epochs=8, reuse=True, **FAST)
    assert again.reused and again.stamp == trained.stamp and again.losses == pytest.approx(trained.losses)


def test_atomic_save_keeps_old_folder_on_failure(tmp_path, beir_dir, monkeypatch):
    out = tmp_path / "reranker"
    out.mkdir()
    (out / "marker.txt").write_text("old model")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "save_model_metadata", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_reranker(output_dir=str(out), data_dir=str(beir_dir), hard_negatives="random", num_train_epochs=0.5,
                       **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reranker"]  # no temp folder left behind
    assert sorted(p.name for p in out.iterdir()) == ["marker.txt"]


def test_trains_from_flagembedding_jsonl(tmp_path):
    rows = [{"query": QUERIES[q], "pos": [DOCS[d][1] for d in judged],
             "neg": [DOCS[d][1] for d in DOCS if d not in judged][:2]} for q, judged in QRELS.items()]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_training_jsonl(path)) == len(rows)
    res = train_reranker(output_dir=str(tmp_path / "rr"), train_data=str(path), num_train_epochs=1, **FAST)
    assert res.n_queries == len(rows) and res.n_steps == 2 and all(math.isfinite(x) for x in res.losses)
    assert Reranker(res, device="cpu").compute_score([("q", "p")])[0] == pytest.approx(
        Reranker(res, device="cpu").compute_score(("q", "p"))[0])


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n" + json.dumps({"query": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        train_reranker(output_dir=str(tmp_path / "rr"), train_data=str(path), **FAST)


@pytest.mark.parametrize("bad", [dict(train_group_size=1), dict(output_dir=""), dict(hard_negatives="magic"),
                                 dict(negative_range=(5, 5)), dict(num_train_epochs=0),
                                 dict(holdout_queries=-1), dict(freeze_layers=-1)])
def test_bad_arguments(bad):
    kw = {"output_dir": "x"} | bad
    with pytest.raises(ValueError, match="Invalid RerankerTrainingArguments"):
        RerankerTrainArgs(**kw)


def test_holdout_queries_are_kept_out_and_reported(tmp_path, beir_dir):
    from bgekit.training.reranker import holdout_split

    held = holdout_split(beir_dir, "train", 3, seed=7)
    assert len(held) == 3 and set(held) <= set(QRELS) and held == sorted(held)
    assert holdout_split(beir_dir, "train", 3, seed=7) == held          # same seed, same queries
    examples, _ = build_reranker_examples(beir_dir, hard_negatives="random", exclude=held)
    assert sorted(e.query for e in examples) == sorted(QUERIES[q] for q in QRELS if q not in held)
    res = train_reranker(output_dir=str(tmp_path / "rr"), data_dir=str(beir_dir), hard_negatives="random",
                         holdout_queries=3, num_train_epochs=1, **{**FAST, "seed": 7})
    assert res.holdout_qids == held and res.n_queries == len(QRELS) - 3
    info = json.loads((tmp_path / "rr" / TRAIN_INFO_FILE).read_text())
    assert info["holdout_qids"] == held
    again = train_reranker(output_dir=str(tmp_path / "rr"), data_dir=str(beir_dir), hard_negatives="random",
                           holdout_queries=3, num_train_epochs=1, reuse=True, **{**FAST, "seed": 7})
    assert again.reused and again.holdout_qids == held
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        holdout_split(beir_dir, "train", len(QRELS))


def test_holdout_refused_for_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]}) + "\n")
    with pytest.raises(ValueError, match="holdout_queries works on BEIR data"):
        train_reranker(output_dir=str(tmp_path / "rr"), train_data=str(path), holdout_queries=1, **FAST)


def test_bf16_training_learns(tmp_path, beir_dir):
    from bgekit.config import fast_bf16

    # this CPU has no native bf16 (AVX2 only), so autocast emulates it, 10x slower than fp32: the lowest 4 of 6
    # layers stay frozen (no backward through them) to keep the test short; the loss must still fall
    res = train_reranker(output_dir=str(tmp_path / "rr"), data_dir=str(beir_dir), hard_negatives="bm25",
                         num_train_epochs=8, bf16=True, **(FAST | {"max_len": 48}), freeze_layers=4)
    first, last = sum(res.losses[:2]) / 2, sum(res.losses[-2:]) / 2
    assert last < first - 0.3, res.losses          # bf16 autocast trains (the loss is computed in fp32)
    rr = Reranker(res, device="cpu")
    assert rr.model.dtype == torch.float32          # the saved weights are fp32 either way
    assert fast_bf16("cpu") in (True, False) and fast_bf16("mps") is False


def test_bf16_on_a_machine_without_a_gpu_needs_no_use_cpu(tmp_path, monkeypatch):
    """Notebook 03 asks for bf16 where the CPU has native bf16 and does not say use_cpu; transformers 5.25 refuses
    bf16 without a GPU unless use_cpu is set, so the arguments set it wherever no accelerator exists."""
    from bgekit.training import RerankerTrainingArguments
    from bgekit.training import arguments as targs

    monkeypatch.setattr(targs, "_has_accelerator", lambda: False)
    args = RerankerTrainingArguments(output_dir=str(tmp_path / "rr"), bf16=True, report_to="none")
    assert args.use_cpu and args.bf16
    assert args.device.type == "cpu"
    monkeypatch.setattr(targs, "_has_accelerator", lambda: True)   # a GPU machine: left to the Trainer
    kept = RerankerTrainingArguments(output_dir=str(tmp_path / "rr"), report_to="none")
    assert kept.use_cpu is False


def test_warmup_steps_given_win_over_the_default_ratio(tmp_path):
    """transformers 5 has no warmup_ratio: bgekit maps it onto warmup_steps (a fraction), but only where the user did
    not give warmup_steps; the reranker's default ratio 0.1 used to overwrite --warmup_steps 10."""
    from bgekit.training import RerankerTrainingArguments

    kw = dict(output_dir=str(tmp_path / "rr"), report_to="none", use_cpu=True)
    assert RerankerTrainingArguments(**kw, warmup_steps=10).warmup_steps == 10
    assert RerankerTrainingArguments(**kw).warmup_steps == pytest.approx(0.1)          # the default ratio
    assert RerankerTrainingArguments(**kw, warmup_ratio=0.25).warmup_steps == pytest.approx(0.25)


def test_freeze_layers_keeps_the_lowest_layers(tmp_path, beir_dir, minilm_path):
    from safetensors.torch import load_file

    res = train_reranker(output_dir=str(tmp_path / "rr"), data_dir=str(beir_dir), hard_negatives="random",
                         num_train_epochs=1, freeze_layers=2, **FAST)
    before, after = load_file(f"{minilm_path}/model.safetensors"), load_file(f"{res.output_dir}/model.safetensors")
    strip = lambda k: k.removeprefix("bert.")

    def same(prefix):
        keys = [k for k in after if strip(k).startswith(prefix)]
        assert keys, prefix
        return all(torch.equal(after[k], before[strip(k)]) for k in keys)

    assert same("embeddings.") and same("encoder.layer.0.") and same("encoder.layer.1.")
    assert not same("encoder.layer.2.") and not same("encoder.layer.5.")
    with pytest.raises(ValueError, match="would freeze all 6 layers"):
        train_reranker(output_dir=str(tmp_path / "rr2"), data_dir=str(beir_dir), hard_negatives="random",
                       num_train_epochs=1, freeze_layers=6, **FAST)


@pytest.mark.parametrize("disable_tqdm", [True, False], ids=["printer", "progress-bar"])
def test_a_loss_per_step_is_logged_but_not_printed(tmp_path, beir_dir, capfd, disable_tqdm):
    """logging_steps=1 keeps every step's loss in the history without printing a line per step, whichever of the
    Trainer's callbacks would print it (PrinterCallback without a bar, ProgressCallback with one)."""
    res = train_reranker(output_dir=str(tmp_path / "rr"), data_dir=str(beir_dir), hard_negatives="random",
                         num_train_epochs=1, **(FAST | {"disable_tqdm": disable_tqdm}))
    assert res.n_steps > 1 and len(res.losses) == res.n_steps
    out, err = capfd.readouterr()
    assert "'loss'" not in out + err


def test_sub_batches_give_the_whole_batch_loss_and_gradients(minilm_path):
    """The reranker's pairs in length-sorted sub-batches of 3 against one forward of all 8 x 4 pairs (dropout off)."""
    from gradients import assert_same_gradients, param_grads
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bgekit._batching import length_sorted_chunks
    from bgekit.training.data import GroupDataset, RerankerCollator, TrainExample
    from bgekit.training.reranker import RerankerTrainer

    examples = [TrainExample(QUERIES[q], [DOCS[d][1] for d in judged], [DOCS[d][1] for d in DOCS if d not in judged])
                for q, judged in QRELS.items()]
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    ds = GroupDataset(examples, [x for _, x in DOCS.values()], 4, seed=0)
    batch = RerankerCollator(tok, 64)([ds[i] for i in range(len(ds))])
    spec = models.ModelSpec(name="rr", kind="reranker", pooling="cls", query_instruction_for_retrieval="", dim=None,
                            max_length=64, normalize=False)
    values, grads = [], []
    for sub in (-1, 3):
        args = RerankerTrainArgs(output_dir="unused", sub_batch_size=sub, **FAST)
        tr = RerankerTrainer(model=model, args=args, train_dataset=ds, spec=spec)
        assert len(length_sorted_chunks(batch, *args.sub_batch_limits())) == (1 if sub == -1 else 11)
        model.train().zero_grad()
        loss = tr.compute_loss(model, batch)
        loss.backward()
        values.append(loss.item())
        grads.append(param_grads(model))
    assert values[1] == pytest.approx(values[0], abs=1e-5)
    assert_same_gradients(grads[0], grads[1], min_params=50)


@pytest.mark.parametrize("head_lr", [1e-3, None])
def test_optimizer_gives_the_fresh_head_its_own_learning_rate(tmp_path, head_lr):
    """Every trainable parameter is optimized once; the head (pooler + classifier) at head_learning_rate, the
    encoder at learning_rate; weight decay on matrices only (not on biases and LayerNorm), as transformers does."""
    from transformers import AutoModelForSequenceClassification

    from bgekit.training.reranker import RerankerTrainer

    model = AutoModelForSequenceClassification.from_pretrained(models.offline_model_path(), num_labels=1)
    model.get_input_embeddings().weight.requires_grad_(False)
    args = RerankerTrainArgs(output_dir=str(tmp_path), head_learning_rate=head_lr, learning_rate=2e-5,
                             weight_decay=0.01, use_cpu=True, report_to="none")
    trainer = RerankerTrainer(model=model, args=args, spec=models.get_spec(str(models.offline_model_path())))
    opt = trainer.create_optimizer()
    seen = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(seen)   # no parameter twice
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert seen.keys() == {id(p) for p in trainable.values()}
    for name, p in trainable.items():
        group = seen[id(p)]
        is_head = name.startswith(("classifier", "bert.pooler"))
        assert group["lr"] == (head_lr if is_head and head_lr is not None else 2e-5), name
        assert group["weight_decay"] == (0.01 if p.ndim >= 2 else 0.0), name
    assert any(n.startswith("classifier") for n in trainable) and any(".pooler." in n for n in trainable)


def test_optimizer_works_with_the_older_trainer_signature(tmp_path, monkeypatch):
    """transformers < 5.7 defines Trainer.create_optimizer(self) without a model argument (pyproject allows 4.56):
    stood in here by wrapping the installed method in that signature."""
    from transformers import AutoModelForSequenceClassification, Trainer

    from bgekit.training.reranker import RerankerTrainer

    new = Trainer.create_optimizer
    monkeypatch.setattr(Trainer, "create_optimizer", lambda self: new(self))
    model = AutoModelForSequenceClassification.from_pretrained(models.offline_model_path(), num_labels=1)
    args = RerankerTrainArgs(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = RerankerTrainer(model=model, args=args, spec=models.get_spec(str(models.offline_model_path())))
    lrs = {g["lr"] for g in trainer.create_optimizer().param_groups}
    assert lrs == {args.learning_rate, args.head_learning_rate}
