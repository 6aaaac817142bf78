"""Shared test setup: one intra-op thread per process (the CI machine has 2 shared cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Set COMPRESS_FULL=1 to run the `slow` cases at full size; CI runs them short.
FULL = os.environ.get("COMPRESS_FULL") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny compress-train run (``experiment=tiny``, 1 epoch) shared by the whole session:
    ``(run directory, results dict, composed config)``."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from compress.train import run

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    data_dir = tmp_path_factory.mktemp("tiny_corpus")
    with initialize_config_dir(config_dir=str(recipes), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny", f"data.data_dir={data_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices...}
    out = tmp_path_factory.mktemp("tiny_run")
    return out, run(cfg, out), cfg


@pytest.fixture(scope="module")
def corpus(tiny_run):
    """The tiny run's data module (its test splits' features) and the corpus folder of its manifests."""
    from compress.pipeline import build_datamodule

    _, _, cfg = tiny_run
    dm = build_datamodule(cfg, progress=False)
    dm.setup()
    return dm, dm.manifests()["test_voices"].parent
