import os

import pytest

from tests import synthetic


def pytest_configure(config):
    """Under pytest-xdist (the pytest config's -n auto: a worker per CPU), the workers share
    the CPUs: torch in each, and the processes its tests start, get cpus // workers threads.
    Two threads per worker on two CPUs made a training step of the tiny CLIP 10x slower (the
    threads wait on each other's busy CPU), not faster."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            os.cpu_count() or 1
        threads = max(1, cpus // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def msrvtt_source(tmp_path_factory):
    """A synthetic MSRVTT/ folder (6 videos of 5..40 frames) and its description."""
    root = tmp_path_factory.mktemp("msrvtt_source")
    info = synthetic.build_msrvtt(root, short_videos=("video7011",))
    return root, info


@pytest.fixture(scope="session")
def msrvtt_zip(msrvtt_source):
    """The synthetic MSRVTT/ folder zipped as the release's MSRVTT.zip, as bytes."""
    root, _ = msrvtt_source
    return synthetic.zip_bytes(root / "MSRVTT")


@pytest.fixture(scope="session")
def msrvtt_root(msrvtt_source, tmp_path_factory):
    """A data_root holding the extracted synthetic MSR-VTT, downloaded from 127.0.0.1."""
    from data_loader import download_msrvtt
    data_root = tmp_path_factory.mktemp("data")
    with synthetic.FileServer(synthetic.zip_bytes(msrvtt_source[0] / "MSRVTT")) as server:
        download_msrvtt(data_root, url=server.url, progress=False)
    return data_root


@pytest.fixture(scope="session")
def clip_preprocess():
    import clip
    return clip.clip._transform(32)


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """Tiny CLIP checkpoints: TorchScript (as the official ones) and a state dict, same weights;
    and a TorchScript one with other weights."""
    folder = tmp_path_factory.mktemp("clip")
    return {"torchscript": synthetic.save_tiny_clip(folder / "tiny.pt"),
            "state_dict": synthetic.save_tiny_clip(folder / "tiny_sd.pt", kind="state_dict"),
            "other": synthetic.save_tiny_clip(folder / "other.pt", seed=1)}


@pytest.fixture
def data_root(msrvtt_root, tmp_path):
    """A private copy of the extracted synthetic MSR-VTT (tests may damage it)."""
    import shutil
    root = tmp_path / "data"
    shutil.copytree(msrvtt_root / "MSRVTT", root / "MSRVTT")
    return root


@pytest.fixture
def disk_order(monkeypatch):
    """The order of fsyncs and renames: a list that fills with ("fsync", the synced path) and
    ("replace", source, target) as they happen (both still done)."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        ("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a), str(b)))
                        or replace(a, b))
    return events
