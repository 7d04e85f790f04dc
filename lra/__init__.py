"""lra-bench: Long Range Arena tasks, the common encoder, training, benchmark and reports."""
from pathlib import Path

__version__ = "0.1.0"


def conf_dir() -> Path:
    """Directory of the Hydra configs: ``lra/conf`` in an installed wheel, ``<repo>/conf`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"lra-bench's Hydra configs were not found next to {here}; "
                            "reinstall the package (pip install lra-bench) or run from the repository")


def _visible_gpus(limit: int | str = 1) -> int:
    """``${lra_visible_gpus:N}`` in configs: min(N, visible CUDA devices) (0 without a GPU)."""
    import torch

    return min(int(limit), torch.cuda.device_count())


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lra_visible_gpus"):
        OmegaConf.register_new_resolver("lra_visible_gpus", _visible_gpus)
