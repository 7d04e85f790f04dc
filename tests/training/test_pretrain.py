"""Self-pretraining (pretrain=mlm|causal): masking, what pretraining may read, the loss going down,
checkpoint selection, resume, fine-tuning from the pretrained weights, configs and the report."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lra import results, tasks
from lra.data import DeviceBatches
from lra.model import Encoder, EncoderConfig, TokenPredictor
from lra.schema import ConfigError
from lra.training import pretrain
from lra.training.config import finetune_settings, pretrain_settings, resolve
from lra.training.finetune import build_model
from lra.training.job import run
from lra.training.state import Preempted
from lra.training.step import TrainStep
from conftest import compose_train, tiny_train_overrides

REPO = Path(__file__).resolve().parents[2]


def last_wins(overrides):
    """Command-line overrides with one value per key: the last one given."""
    out = {}
    for o in overrides:
        out[o.split("=", 1)[0]] = o
    return list(out.values())


def spt_overrides(cache, *extra, steps=8):
    """A tiny ListOps job: ``steps`` masked-pretraining steps, then 4 fine-tuning steps."""
    return last_wins(tiny_train_overrides(cache, "attention=full", "pretrain=mlm", f"pretrain.steps={steps}",
                                          "pretrain.warmup=2", "pretrain.batch_size=8", "pretrain.eval_every=4",
                                          "pretrain.checkpoint_every=4", "trainer.steps=4", *extra))


# ----------------------------------------------------------------------------- masking

def test_masking_never_touches_padding():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 9, (64, 50))
    lengths = torch.randint(1, 51, (64,))
    pad = torch.arange(50)[None, :] < lengths[:, None]
    tokens[~pad] = 0
    real = pretrain.real_positions(tokens, pad, mask_zero_tokens=False)
    inputs, targets = pretrain.mask_tokens(tokens, real, 0.9, mask_id=99, generator=g)
    masked = inputs == 99
    assert masked.any() and not (masked & ~pad).any()           # padding is never masked ...
    assert (targets[~pad] == pretrain.IGNORE).all()              # ... nor predicted
    assert torch.equal(inputs[~pad], tokens[~pad])
    assert torch.equal(targets[masked], tokens[masked])          # the loss sees the original token
    assert (targets[~masked] == pretrain.IGNORE).all()           # and only masked positions
    # rate: about 15% of the real positions, none of the padding
    inputs, _ = pretrain.mask_tokens(tokens, real, 0.15, 99, torch.Generator().manual_seed(1))
    share = float((inputs == 99).sum() / pad.sum())
    assert 0.12 < share < 0.18
    # next-token targets: none from or to padding
    nxt = pretrain.next_token_targets(tokens, real)
    ok = nxt != pretrain.IGNORE
    assert not (ok & ~pad).any() and not (ok[:, :-1] & ~pad[:, 1:]).any()
    assert torch.equal(nxt[:, :-1][ok[:, :-1]], tokens[:, 1:][ok[:, :-1]])


def test_zero_tokens_the_encoder_ignores_are_padding_too():
    """With model.mask_zero_tokens (the LRA recipe's black pixels) zero tokens are padding to the
    encoder, so they are never masked or predicted either."""
    pixels = torch.randint(0, 3, (8, 40))  # pixel tasks: no pad id, every position a value
    real = pretrain.real_positions(pixels, None, mask_zero_tokens=True)
    inputs, targets = pretrain.mask_tokens(pixels, real, 0.99, 256, torch.Generator().manual_seed(0))
    zero = pixels == 0
    assert zero.any() and not (inputs[zero] == 256).any() and (targets[zero] == pretrain.IGNORE).all()
    everything = pretrain.real_positions(pixels, None, mask_zero_tokens=False)
    assert everything.all()


def test_token_predictor_rows_are_input_positions():
    for pooling in ("cls", "mean"):
        enc = Encoder(EncoderConfig(vocab_size=7, num_classes=2, max_length=16, d_model=16, heads=2, mlp_dim=16,
                                    layers=1, pooling=pooling, attention="full", mask_token=True))
        assert enc.mask_id == 7 and enc.embed.num_embeddings == 8
        logits = TokenPredictor(enc)(torch.tensor([[1, 7, 3, 0]]), torch.tensor([[True, True, True, False]]))
        assert logits.shape == (1, 4, 7)


# ----------------------------------------------------------------------------- what pretraining reads

class Poison:
    """A split part pretraining must not read: any use raises."""

    def __init__(self, what):
        self.what = what

    def __getattr__(self, name):
        raise AssertionError(f"pretraining read the {self.what}")

    def __iter__(self):
        raise AssertionError(f"pretraining read the {self.what}")

    def __len__(self):
        raise AssertionError(f"pretraining read the {self.what}")


def _prepared(tmp_path, *extra):
    cfg = compose_train(*spt_overrides(tmp_path / "cache", *extra))
    task_cfg, model_kw, tr, knobs = resolve(cfg)
    spt = pretrain_settings(cfg, task_cfg.name, tr)
    model_kw, tr = finetune_settings(spt, model_kw, tr)
    data = tasks.prepare(task_cfg)
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=data.vocab_size, num_classes=data.num_classes, max_length=data.seq_len,
                                  attention="full", **model_kw))
    return spt, model, data, tr


def test_no_label_validation_or_test_example_reaches_pretraining(tmp_path, monkeypatch):
    spt, model, data, tr = _prepared(tmp_path)
    (x_train, _), (x_val, _), (x_test, _) = data.splits["train"], data.splits["val"], data.splits["test"]
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    train_rows, held_out = rows(x_train), rows(x_val) | rows(x_test)
    assert not train_rows & held_out  # the fixture can tell the splits apart
    # labels and the test split are poisoned: reading them fails the test
    poisoned = tasks.TaskData(data.name, {"train": (x_train, Poison("training labels")),
                                          "val": (x_val, Poison("validation labels")),
                                          "test": Poison("test split")},
                              data.vocab_size, data.num_classes, data.seq_len, data.dual, data.pad_id)
    seen = []
    real_forward = TokenPredictor.forward

    def spy(self, tokens, mask=None):
        if self.training:  # a gradient step (validation runs in eval mode)
            seen.append(tokens.clone())
        return real_forward(self, tokens, mask)

    monkeypatch.setattr(TokenPredictor, "forward", spy)
    out = pretrain.pretrain(spt, model, poisoned, torch.device("cpu"), None, tmp_path, 0, {**tr, "progress": False})
    assert out["status"] == "ok", out["message"]
    assert len(seen) == spt["steps"]
    mask_id = model.mask_id
    for batch in seen:
        for row in batch:
            keep = row != mask_id  # the masked positions hide a token: the row must match a training row there
            assert any(torch.equal(row[keep], torch.tensor(t)[keep]) for t in train_rows), "a non-training input"


# ----------------------------------------------------------------------------- the loss goes down

def write_reviews(root: Path, per_class: int = 60, test_per_class: int = 8, seed: int = 0) -> Path:
    """Tiny IMDb-like reviews in the aclImdb layout: short English sentences from a small vocabulary."""
    rng = random.Random(seed)
    good, bad = ["great", "wonderful", "moving", "funny", "superb"], ["boring", "awful", "dull", "silly", "weak"]
    things = ["plot", "acting", "music", "story", "ending", "cast", "script"]
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls, words in (("pos", good), ("neg", bad)):
            d = root / "aclImdb" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                text = " ".join(f"The {rng.choice(things)} was {rng.choice(words)}." for _ in range(rng.randint(3, 6)))
                (d / f"{i}_{8 if cls == 'pos' else 3}.txt").write_text(text)
    return root


@pytest.mark.parametrize("task", ["listops", "text"])
def test_pretraining_loss_falls_well_below_its_start(tmp_path, task):
    extra = ["task=text", f"task.data_dir={write_reviews(tmp_path / 'imdb')}"] if task == "text" else []
    overrides = spt_overrides(tmp_path / "cache", *extra, "pretrain.lr=3e-3", "pretrain.eval_every=20",
                              "pretrain.batch_size=16", "trainer.task_overrides.num_train=128",
                              "trainer.model_overrides.d_model=32", "trainer.steps=1", steps=60)
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    hist = rec["case"]["pretrain"]["history"]
    start, best = hist[0]["val_loss"], rec["case"]["pretrain"]["best_val_loss"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == 60
    # ListOps digits are random arguments (only brackets/operators are predictable), Text is English
    assert best < (0.92 if task == "listops" else 0.7) * start, (start, best)
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]


# ----------------------------------------------------------------------------- checkpoints and resume

def _load(path):
    return torch.load(path, weights_only=False)


def test_resumed_pretraining_ends_bit_identical(tmp_path, monkeypatch):
    overrides = spt_overrides(tmp_path / "cache", "pretrain.checkpoint_every=3", "pretrain.eval_every=4", steps=10)
    full = run(compose_train(*overrides), tmp_path / "a")
    # interrupted: dies at pretraining step 7, after the pretraining checkpoint of step 6
    real_batch = DeviceBatches.batch
    died = []

    def dying_batch(self, step):
        if step == 7 and self.shuffle and not died:
            died.append(step)
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(DeviceBatches, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        run(compose_train(*overrides), tmp_path / "b")
    assert _load(tmp_path / "b" / pretrain.CHECKPOINT)["step"] == 6
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = run(compose_train(*overrides), tmp_path / "b")
    for name in (pretrain.CHECKPOINT, pretrain.BEST, "checkpoint.pt"):
        a, b = _load(tmp_path / "a" / name), _load(tmp_path / "b" / name)
        for key in ("model", "encoder"):
            if key in a:
                assert a[key].keys() == b[key].keys()
                for w in a[key]:
                    assert torch.equal(a[key][w], b[key][w]), (name, w)
    pa, pb = full["case"]["pretrain"], resumed["case"]["pretrain"]
    assert pa["history"] == pb["history"] and pa["best_step"] == pb["best_step"]
    for key in ("accuracy", "loss", "val_accuracy", "pretrain_val_loss"):
        assert full["metrics"][key] == resumed["metrics"][key], key


def test_preempted_in_either_phase_resumes(tmp_path, monkeypatch):
    """SIGTERM in pretraining, then in fine-tuning: each time a checkpoint and Preempted; the job
    directory run again finishes with the uninterrupted run's record."""
    overrides = spt_overrides(tmp_path / "cache", "pretrain.checkpoint_every=100", "trainer.steps=6", steps=8)
    ref = run(compose_train(*overrides), tmp_path / "ref")
    real_batch = DeviceBatches.batch
    calls = {"n": 0}

    def signalling_batch(self, step):
        if self.shuffle:
            calls["n"] += 1
            if calls["n"] in (5, 8 + 3):  # pretraining step 4; then fine-tuning step 2 of the resumed job
                os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(self, step)

    monkeypatch.setattr(DeviceBatches, "batch", signalling_batch)
    with pytest.raises(Preempted, match="pretraining step 5"):
        run(compose_train(*overrides), tmp_path / "job")
    assert _load(tmp_path / "job" / pretrain.CHECKPOINT)["step"] == 5
    calls["n"] = 5
    with pytest.raises(Preempted, match="at step 3"):
        run(compose_train(*overrides), tmp_path / "job")
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok"
    assert rec["case"]["pretrain"]["history"] == ref["case"]["pretrain"]["history"]
    for key in ("accuracy", "loss", "val_accuracy", "steps", "pretrain_steps"):
        assert rec["metrics"][key] == ref["metrics"][key], key


def test_finetuning_starts_from_the_best_pretrained_weights(tmp_path, monkeypatch):
    """The first fine-tuning step sees the selected pretraining checkpoint's weights: not the job's
    initial weights, and not the last pretraining step's (here the selection is forced to step 4)."""
    first = {}
    real_call = TrainStep.__call__

    def spy(self, step):
        if not first:
            first.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return real_call(self, step)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    monkeypatch.setattr(pretrain, "_better", lambda select, score, best: best is None or best["step"] == 0)
    overrides = spt_overrides(tmp_path / "cache", steps=12)
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    best = _load(tmp_path / "job" / pretrain.BEST)
    assert best["step"] == 4 == rec["metrics"]["pretrain_best_step"]
    encoder = {k: v for k, v in best["encoder"].items() if not k.startswith("head.")}
    assert encoder and all(torch.equal(first[k], v) for k, v in encoder.items())
    matrices = [k for k in encoder if k.endswith("weight") and "norm" not in k]
    last = _load(tmp_path / "job" / pretrain.CHECKPOINT)["model"]  # the pretraining model after step 12
    assert all(not torch.equal(last[f"encoder.{k}"], first[k]) for k in matrices)
    # ... nor the weights the job initialised (built as lra.training.finetune.train builds them): no silent scratch start
    cfg = compose_train(*overrides)
    task_cfg, model_kw, tr, knobs = resolve(cfg)
    model_kw, _ = finetune_settings(pretrain_settings(cfg, task_cfg.name, tr), model_kw, tr)
    torch.manual_seed(cfg.seed)
    init = build_model(tasks.prepare(task_cfg), model_kw, "full", {**knobs, "seed": cfg.seed}).state_dict()
    assert init.keys() == first.keys()
    assert all(not torch.equal(init[k], first[k]) for k in matrices)
    assert all(torch.equal(init[k], first[k]) for k in first if k.startswith("head."))  # classifier: fresh


@pytest.mark.parametrize("select", ["loss", "accuracy"])
def test_checkpoint_selection(tmp_path, select):
    rec = run(compose_train(*spt_overrides(tmp_path / "cache", f"pretrain.select={select}", steps=12)), tmp_path / "j")
    hist = rec["case"]["pretrain"]["history"]
    best = min(hist, key=lambda h: h["val_loss"]) if select == "loss" else max(hist, key=lambda h: h["val_accuracy"])
    assert rec["case"]["pretrain"]["best_step"] == best["step"]
    assert _load(tmp_path / "j" / pretrain.BEST)["step"] == best["step"]


# ----------------------------------------------------------------------------- configs and records

def test_record_holds_both_phases(tmp_path):
    rec = run(compose_train(*spt_overrides(tmp_path / "cache", "pretrain.budget=shared", "trainer.steps=10",
                                           steps=6)), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    cfg = rec["config"]
    assert cfg["pretrain"]["objective"] == "mlm" and cfg["pretrain"]["mask_rate"] == 0.1  # ListOps: the paper's 10%
    assert cfg["pretrain"]["finetune_steps"] == 4 and rec["metrics"]["steps"] == 4        # shared budget: 10 - 6
    assert rec["metrics"]["pretrain_steps"] == 6 and cfg["model"]["mask_token"] is True
    assert [h["step"] for h in rec["case"]["pretrain"]["history"]] == [0, 4, 6]
    row = results.load(tmp_path / "job").iloc[0]
    assert row["pretrain_steps"] == 6 and row["steps"] == 4


def test_paper_defaults_per_task():
    for task, rate, lr in (("listops", 0.10, 1e-3), ("text", 0.15, 5e-4), ("retrieval", 0.15, 5e-3),
                           ("image", 0.50, 1e-3), ("pathfinder", 0.50, 1e-3), ("pathx", 0.50, 5e-4)):
        cfg = compose_train(f"task={task}", "pretrain=mlm")
        spt = pretrain_settings(cfg, task, resolve(cfg)[2])
        assert (spt["mask_rate"], spt["lr"], spt["schedule"], spt["batch_size"]) == (rate, lr, "constant", 32), task
    cfg = compose_train("trainer=quick", "pretrain=mlm", "pretrain.steps=30")  # explicit beats the preset
    assert pretrain_settings(cfg, "listops", resolve(cfg)[2])["steps"] == 30
    assert pretrain_settings(compose_train("pretrain=none"), "listops", {}) is None


@pytest.mark.parametrize("overrides,message", [
    (["pretrain=mlm", "pretrain.mask_rate=1.5"], r"pretrain.mask_rate=1.5 is invalid"),
    (["pretrain=mlm", "pretrain.budget=shared", "pretrain.steps=8"], r"leaves trainer.steps=8 - pretrain.steps=8"),
    (["pretrain=mlm", "pretrain.select=perplexity"], r"pretrain.select='perplexity' is invalid"),
    (["pretrain=causal", "attention=linformer"], r"pretrain=causal predicts each next token, which needs causal attention"),
])
def test_bad_pretraining_config_fails_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_train(*tiny_train_overrides(tmp_path / "cache", *overrides)), tmp_path / "job")
    assert not (tmp_path / "job" / pretrain.CHECKPOINT).exists()


def test_causal_pretraining_with_a_causal_variant(tmp_path):
    rec = run(compose_train(*spt_overrides(tmp_path / "cache", "pretrain=causal", "attention=random_feature",
                                           "attention.gate=true", "attention.num_features=8", steps=6)), tmp_path / "j")
    assert rec["status"] == "ok", rec["message"]
    assert rec["config"]["pretrain"]["objective"] == "causal" and rec["config"]["model"]["mask_token"] is False
    assert "mask_rate" not in rec["config"]["pretrain"]


def test_sweep_over_protocols_end_to_end(tmp_path):
    """`lra-train -m pretrain=none,mlm`: both jobs run, and the sweep's report has a table per protocol
    and the gain table."""
    sweep = tmp_path / "sweep"
    extra = [o for o in spt_overrides(tmp_path / "cache") if not o.startswith(("pretrain=", "attention="))]
    cmd = [sys.executable, "-m", "lra.cli.train", "-m", "pretrain=none,mlm", "attention=full", "pretrain.budget=shared",
           "trainer.steps=12", f"hydra.sweep.dir={sweep}", *[o for o in extra if not o.startswith("trainer.steps")]]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df = results.load(sweep)
    assert sorted(df["pretrain_steps"].fillna(0)) == [0, 8] and (df["status"] == "ok").all()
    report = (sweep / "report" / "report.md").read_text()
    assert "Table 1, CPU protocol (recipe `lra`)" in report and "self-pretrained first (spt)" in report
    assert "Gain from self-pretraining" in (sweep / "report" / "report-training.md").read_text()
    records = [json.loads(p.read_text()) for p in sweep.rglob("record.json")]
    assert sorted(r["config"]["pretrain"]["objective"] for r in records) == ["mlm", "none"]


# ----------------------------------------------------------------------------- report

def test_report_protocol_column_tables_and_gain(tmp_path):
    from lra.report import build_report
    from lra.report.frame import load_frame, protocol_of

    def write(variant, objective, acc, seed):
        pre = {"objective": objective, "mask_rate": 0.15, "steps": 200, "finetune_steps": 300, "budget": "shared",
               "lr": 1e-3, "schedule": "constant", "select": "loss"}
        rec = results.make_record("train", variant=variant, task="text", metrics={"accuracy": acc}, seq_len=128,
                                  seed=seed, config={"recipe": "lra", "pretrain": pre})
        results.write_record(rec, tmp_path / "records" / f"{variant}-{objective}-{seed}.json")

    for seed, (a, b) in enumerate([(0.60, 0.70), (0.62, 0.74)]):
        write("flash", "none", a, seed)
        write("flash", "mlm", b, seed)
    write("linear", "none", 0.55, 0)  # no spt run: no gain row
    df = load_frame(tmp_path / "records")
    assert sorted(df["protocol"]) == ["scratch", "scratch", "scratch", "spt", "spt"]
    assert protocol_of({"recipe": "lra"}, "train") == "scratch"   # records from before pretraining existed
    md = build_report([tmp_path / "records"], tmp_path / "report", figure_formats=()).read_text()
    acc = md[md.index("### Accuracy vs time per step"):]
    scratch, spt = acc.index("#### Table 1, CPU protocol (recipe `lra`)"), acc.index("self-pretrained first (spt)")
    assert "61.00 ± 1.41" in acc[scratch:spt] and "72.00 ± 2.83" in acc[spt:]    # one table per protocol
    training = (tmp_path / "report" / "report-training.md").read_text()
    gain = training[training.index("Gain from self-pretraining"):]
    assert "| flash     | +11.00 |      +11.00 |" in gain and "linear" not in gain.split("Caution")[0]
    assert "15% of positions masked, 200 pretraining steps within one budget (then 300 fine-tuning steps)" in training
    assert "Transformers + Rotary + Masked SPT" in training and "86.2" in training
    # the tidy CSV keeps the protocol
    assert sorted(load_frame(tmp_path / "report" / "tidy.csv")["protocol"]) == sorted(df["protocol"])


def test_pixel_task_pretrains_on_the_256_intensities(tmp_path):
    """Pathfinder: 50% of the non-padding pixels masked (the paper's rate for visual tasks), predicted
    as one of 256 intensity classes."""
    from conftest import train_two_steps

    rec = train_two_steps(tmp_path, "pathfinder", "trainer.task_overrides.seq_len=121",  # the smallest valid
                          "trainer.task_overrides.num_train=16", "trainer.task_overrides.num_val=4",
                          "trainer.task_overrides.num_test=4", "pretrain=mlm", "pretrain.steps=2",
                          "pretrain.warmup=1", "pretrain.eval_every=2", "pretrain.batch_size=4")
    assert rec["config"]["pretrain"]["mask_rate"] == 0.5
    head = _load(Path(rec["case"]["pretrain"]["checkpoint"]).with_name(pretrain.CHECKPOINT))["model"]["head.weight"]
    assert head.shape[0] == 256
    assert rec["metrics"]["pretrain_steps"] == 2 and rec["metrics"]["steps"] == 2


def test_constant_schedule_warms_up_then_stays():
    from lra.training.optim import lr_factor

    f = lr_factor("constant", 10, 100)
    assert [f(s) for s in (0, 5, 10, 50, 99)] == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 0, 100)(0) == 1.0


def test_dual_input_task_pretrains_on_each_document(tmp_path):
    """Retrieval: the two documents of a training pair are two pretraining rows; 15% masked (the paper's
    rate for text)."""
    from conftest import train_two_steps, write_aan

    root = write_aan(tmp_path / "tsv", n=6)
    rec = train_two_steps(tmp_path, "retrieval", f"task.data_dir={root}", "trainer.task_overrides.seq_len=32",
                          "pretrain=mlm", "pretrain.steps=2", "pretrain.warmup=1", "pretrain.eval_every=2",
                          "pretrain.batch_size=4")
    assert rec["config"]["pretrain"]["mask_rate"] == 0.15 and rec["metrics"]["pretrain_steps"] == 2
    data = tasks.TaskData("retrieval", {"train": (torch.arange(24).view(3, 2, 4), None)}, 30, 2, 4, dual=True)
    assert torch.equal(pretrain.pretraining_inputs(data), torch.arange(24).view(6, 4))


def test_a_scratch_job_directory_is_not_resumed_as_spt(tmp_path):
    run(compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=full", "trainer.steps=4")), tmp_path / "j")
    (tmp_path / "j" / "record.json").unlink()  # as if killed before the record
    with pytest.raises(ConfigError, match="started without pretraining"):
        run(compose_train(*spt_overrides(tmp_path / "cache")), tmp_path / "j")


@pytest.mark.gpu
def test_pretraining_on_cuda_in_bf16(tmp_path):
    """CUDA paths: bf16 autocast, fused AdamW (the classifier has no gradient while pretraining), masks
    from CUDA generators, rotary in bf16."""
    overrides = spt_overrides(tmp_path / "cache", "trainer.device=cuda", "model.pos_emb=rotary", steps=8)
    a = run(compose_train(*overrides), tmp_path / "a")
    assert a["status"] == "ok", a["message"]
    assert a["dtype"] == "bfloat16" and a["metrics"]["pretrain_steps"] == 8
    b = run(compose_train(*overrides), tmp_path / "b")
    ha, hb = a["case"]["pretrain"]["history"], b["case"]["pretrain"]["history"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb]  # same masks and batches (CUDA sums may differ
    assert [h["val_loss"] for h in ha] == pytest.approx([h["val_loss"] for h in hb], rel=1e-2)  # in the last bits)


@pytest.mark.parametrize("bucketing", [True, False])
def test_pretraining_batches_are_length_bucketed_like_fine_tuning(tmp_path, monkeypatch, bucketing):
    """With trainer.bucketing on, pretraining's batches are cut to their longest example (rounded up to
    trainer.bucket_multiple), as fine-tuning's are; off, every batch is the full task length."""
    widths = []
    forward = TokenPredictor.forward

    def spy(self, tokens, mask=None):
        widths.append(tokens.shape[-1])
        return forward(self, tokens, mask)

    monkeypatch.setattr(TokenPredictor, "forward", spy)
    overrides = spt_overrides(tmp_path / "cache", f"trainer.bucketing={str(bucketing).lower()}",
                              "trainer.bucket_multiple=8", "trainer.task_overrides.seq_len=64")
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert widths and all(w % 8 == 0 and w <= 64 for w in widths)
    if bucketing:
        assert min(widths) < 64 and len(set(widths)) > 1, widths
    else:
        assert set(widths) == {64}, widths


def test_distillation_holds_no_pretraining_activations(tmp_path, monkeypatch):
    """attention.distill applies to fine-tuning: pretraining's forwards (through the encoder's hidden
    states, not its forward) must not leave q, k captures piling up, one set per pretraining step."""
    from lra.distill import LayerDistiller

    most = [0]
    capture = LayerDistiller._capture

    def spy(self, *args):
        capture(self, *args)
        most[0] = max(most[0], len(self._captured))

    monkeypatch.setattr(LayerDistiller, "_capture", spy)
    overrides = spt_overrides(tmp_path / "cache", "attention=hedgehog", "attention.distill=1.0", steps=8)
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["distill"]["on"] and rec["metrics"]["distill_loss"] > 0
    assert 0 < most[0] <= 2, most[0]   # at most one capture per layer (2 layers) at a time


def test_capped_pretraining_validation_reads_the_first_examples_when_bucketed():
    """pretrain.eval_batches caps validation at its first batches' examples, bucketed or not (as
    fine-tuning's evaluation does), not at the shortest examples of a length-sorted split."""
    torch.manual_seed(0)
    n, length = 32, 24
    lengths = torch.cat([torch.full((8,), 20), torch.randint(2, 6, (n - 8,))])  # the first 8 are the long ones
    tokens = torch.randint(1, 9, (n, length)) * (torch.arange(length)[None, :] < lengths[:, None])
    enc = Encoder(EncoderConfig(vocab_size=9, num_classes=2, max_length=length, d_model=16, heads=2, mlp_dim=16,
                                layers=1, pooling="mean", attention="full", mask_token=True))
    lm = TokenPredictor(enc)
    seen = []
    forward = TokenPredictor.forward
    lm.forward = lambda x, mask=None: (seen.append(int((x != 0).sum(-1).max())), forward(lm, x, mask))[1]
    spt = {"objective": "mlm", "mask_rate": 0.5}
    ids = torch.arange(n)
    for multiple in (None, 4):
        seen.clear()
        batches = DeviceBatches(tokens, ids, 8, "cpu", pad_id=0, shuffle=False, bucket_multiple=multiple)
        pretrain.evaluate(lm, batches, spt, None, seed=0, max_batches=1)
        assert seen == [20], (multiple, seen)  # one batch: the first 8 examples, the long ones
