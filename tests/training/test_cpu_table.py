"""experiment=cpu_table, the CPU accuracy protocol: its cells compose to the sizes docs/protocols.md states,
every record names the protocol, and a Text job without the IMDb reviews stops before any work."""
import pytest

from lra import tasks
from lra.tasks import DataNotFoundError
from lra.training.config import resolve
from lra.training.job import run
from conftest import compose_train


@pytest.mark.parametrize("cell,name,seq_len,steps", [("listops", "listops", 512, 1000), ("text", "text", 256, 1500)])
def test_cells_compose_to_the_protocol_sizes(cell, name, seq_len, steps):
    cfg = compose_train("experiment=cpu_table", f"+cpu_table={cell}", "imdb_dir=/data/imdb")
    task, model, trainer, _ = resolve(cfg)
    assert cfg.protocol == "cpu_table"
    assert (task.name, task.seq_len, trainer["steps"], trainer["batch_size"]) == (name, seq_len, steps, 32)
    assert (model["d_model"], model["qkv_dim"], model["heads"], model["layers"]) == (64, 64, 4, 2)
    if name == "text":
        assert task.data_dir == "/data/imdb"


@pytest.mark.parametrize("imdb_dir,message", [("null", r"needs task\.data_dir.*imdb_dir=<folder>"),
                                              ("{missing}", r"{missing}")])
def test_a_text_job_without_the_reviews_stops_before_any_work(tmp_path, monkeypatch, imdb_dir, message):
    missing = tmp_path / "no-imdb-here"
    built = []
    monkeypatch.setattr(tasks, "prepare", lambda cfg, _real=tasks.prepare: built.append(cfg) or _real(cfg))
    cfg = compose_train("experiment=cpu_table", "+cpu_table=text", f"imdb_dir={imdb_dir.format(missing=missing)}",
                        f"task.cache_dir={tmp_path / 'cache'}", "trainer.progress=false")
    with pytest.raises(DataNotFoundError, match=message.format(missing=str(missing))):
        run(cfg, tmp_path / "job")
    assert built, "the error comes from preparing the data"
    assert not (tmp_path / "job" / "checkpoint.pt").exists() and not (tmp_path / "cache").exists()
