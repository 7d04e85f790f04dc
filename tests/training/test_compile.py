"""trainer.compile (lra.compiled): a compiled run gives the eager run's record and loss curve; a step
whose compilation fails is redone eagerly, bit for bit, and the record says why.

The inductor tests (C++ code generation: minutes on a small CPU) run with LRA_SLOW_TESTS=1; the
others trace with the aot_eager backend (dynamo + AOTAutograd, no code generation), which exercises
the same wrapping, graph capture and fallback paths in seconds."""
import os

import pytest
import torch

from lra.compiled import CompiledModel, resolve_mode
from lra.training.job import run
from conftest import SMALL_KNOBS, compose_train, tiny_train_overrides

slow = pytest.mark.skipif(not os.environ.get("LRA_SLOW_TESTS"), reason="inductor on CPU takes minutes: "
                          "LRA_SLOW_TESTS=1 runs it")


def _losses(record):
    return [h["train_loss"] for h in record["case"]["history"]]


def _fields(record):
    return {"top": set(record), "metrics": set(record["metrics"]), "case": set(record["case"]) - {"compile"},
            "config": set(record["config"]["trainer"])}


def _pair(tmp_path, *extra, backend="aot_eager", dropout=0.1):
    overrides = [o for o in tiny_train_overrides(tmp_path / "cache", "attention=full", "trainer.steps=12",
                                                 "trainer.eval_every=2", "trainer.log_every=2", *extra)
                 if not o.startswith("trainer.model_overrides.dropout")] + [f"trainer.model_overrides.dropout={dropout}"]
    eager = run(compose_train(*overrides), tmp_path / "eager")
    compiled = run(compose_train(*overrides, "trainer.compile=true", f"trainer.compile_backend={backend}"),
                   tmp_path / "compiled")
    return eager, compiled


def test_compiled_run_gives_the_eager_record_and_loss_curve(tmp_path):
    eager, compiled = _pair(tmp_path)
    assert eager["status"] == compiled["status"] == "ok"
    assert _fields(eager) == _fields(compiled)
    assert compiled["case"]["compile"]["status"] == "compiled" and eager["case"]["compile"] == {"status": "off"}
    assert compiled["config"]["trainer"]["compile"] is True
    # aot_eager runs the same aten ops: the curves agree to float rounding
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4, abs=1e-5)


def _failing_backend(gm, example_inputs):
    def compiled(*args):
        torch.rand(3)   # draws from the random stream first, as a step that fails halfway would
        raise RuntimeError("this backend cannot compile anything")
    return compiled


def test_a_failing_compilation_falls_back_to_eager_bit_for_bit(tmp_path, capsys):
    torch._dynamo.register_backend(_failing_backend, name="lra_test_failing")
    eager, fallback = _pair(tmp_path, backend="lra_test_failing")
    facts = fallback["case"]["compile"]
    assert fallback["status"] == "ok" and facts["status"] == "fallback"
    assert "cannot compile anything" in facts["reason"]
    assert "training eagerly from here on" in capsys.readouterr().out
    assert _losses(fallback) == _losses(eager)                                    # redone from the same state
    for key in ("accuracy", "loss", "val_accuracy", "val_loss"):
        assert fallback["metrics"][key] == eager["metrics"][key], key


def test_compile_mode_auto_is_cuda_graphs_on_cuda_only():
    assert resolve_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert resolve_mode("auto", torch.device("cpu")) == "default"
    with pytest.raises(ValueError, match="not one of"):
        resolve_mode("fastest", torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    assert CompiledModel(model, device="cuda").cudagraphs and not CompiledModel(model, device="cpu").cudagraphs


def test_bad_compile_settings_fail_before_any_data(tmp_path):
    from lra.schema import ConfigError

    with pytest.raises(ConfigError, match="trainer.compile_mode='fastest' is invalid"):
        run(compose_train(*tiny_train_overrides(tmp_path / "cache", "trainer.compile_mode=fastest")), tmp_path / "j")


@slow
def test_inductor_compiled_run_matches_eager_within_noise(tmp_path):
    """Without dropout (inductor draws its own dropout masks, so with dropout the curves differ by
    that noise), the inductor-compiled run's loss curve is eager's to float rounding."""
    eager, compiled = _pair(tmp_path, backend="inductor", dropout=0.0)
    assert compiled["case"]["compile"]["status"] == "compiled" and _fields(eager) == _fields(compiled)
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-3, abs=1e-4)


@slow
@pytest.mark.parametrize("name", sorted(SMALL_KNOBS))
def test_every_variant_compiles_and_matches_eager(name):
    """Forward and backward of the compiled encoder at two bucket lengths: every in-tree variant compiles
    (no fallback; a failure would say why) and gives the eager model's logits."""
    from lra.model import Encoder, EncoderConfig

    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=17, num_classes=3, max_length=64, d_model=32, heads=2, mlp_dim=32,
                                  layers=1, dropout=0.0, attention=name, attention_cfg=SMALL_KNOBS[name],
                                  mask_zero_tokens=True))
    step = CompiledModel(model, backend=os.environ.get("LRA_COMPILE_BACKEND", "inductor"))
    for n in (48, 64):
        x = torch.randint(1, 17, (4, n))
        try:
            out = step(x, x != 0)
            out.sum().backward()
        except Exception as err:  # noqa: BLE001 - what TrainStep does
            step.fall_back(err)
            out = model(x, x != 0)
        torch.testing.assert_close(out, model(x, x != 0), rtol=1e-4, atol=1e-5)
    facts = step.facts()
    assert facts["status"] == "compiled", facts.get("reason")
