"""Untrusted files: a checkpoint or a trace carrying a pickle payload is refused with an error
naming the file, and the payload never runs (its marker file is never created); every truncation
of a checkpoint is a clear error too."""

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import samplers
from flowmc_ebm import cli
from flowmc_ebm.checkpoint import FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from flowmc_ebm.trainer import JointTrainer

KIND = "joint-trainer"


class OpensFile:
    """Unpickling this creates ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsShell:
    """Unpickling this runs ``touch marker`` in a shell."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


PAYLOADS = [OpensFile, RunsShell]


def payload_is_live(cls, tmp_path):
    """The payload does create its marker when unpickled by a trusting reader: the tests below
    would fail if loading were not safe."""
    marker = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(cls(marker)))
    made = marker.exists()
    marker.unlink(missing_ok=True)
    return made


def torch_zip(path, obj):
    torch.save(obj, path)


def torch_zip_nested(path, obj):
    # Deep inside an otherwise good-looking trainer checkpoint, beside real tensors.
    torch.save({"format": FORMAT, "kind": KIND, "energy": {"w": torch.ones(3)},
                "history": {"loss_energy": [0.1, obj]}}, path)


def legacy_pickle(path, obj):
    # The pre-zip torch format: a bare pickle stream.
    path.write_bytes(pickle.dumps({"format": FORMAT, "kind": KIND, "x": obj}, protocol=2))


def swapped_data_pkl(path, obj):
    # A genuine checkpoint whose data.pkl inside the zip is replaced by the payload.
    good = io.BytesIO()
    torch.save({"format": FORMAT, "kind": KIND, "w": torch.ones(2)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"format": FORMAT, "kind": KIND, "x": obj}, protocol=2)
            dst.writestr(info, data)


WRITERS = [torch_zip, torch_zip_nested, legacy_pickle, swapped_data_pkl]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__name__)
def test_a_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path, payload, write):
    assert payload_is_live(payload, tmp_path)
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    write(path, payload(marker))
    with pytest.raises(ValueError, match=r"evil\.pt is not a readable flowmc-ebm checkpoint"):
        load_checkpoint(path, KIND)
    with pytest.raises(ValueError, match=r"evil\.pt"):
        JointTrainer.load(path)
    assert not marker.exists()


def test_resume_skips_a_booby_trapped_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--iterations", "4", "--out", str(run), "--set", "checkpoint_every=2",
                     "--set", "trainer.pool_size=32", "--set", "trainer.batch_size=16",
                     "--set", "trainer.n_negatives=16", "--set", "model.energy_hidden=[8]",
                     "--set", "model.flow_hidden=[8]", "--set", "n_data=64",
                     "--no-progress"]) == 0
    marker = tmp_path / "marker"
    evil = run / "checkpoints" / "iter-000099.pt"
    torch_zip(evil, {"format": FORMAT, "kind": KIND, "x": OpensFile(marker)})
    with pytest.warns(UserWarning, match=r"iter-000099\.pt is not a readable"):
        assert latest_checkpoint(run / "checkpoints").name == "iter-000004.pt"
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--iterations", "6", "--out", str(run),
                     "--no-progress"]) == 0
    assert "iter-000099.pt is not a readable" in capsys.readouterr().err
    assert not marker.exists()
    assert not evil.exists()  # the resumed run's first write replaced the abandoned future


def test_every_truncation_of_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "t.pt"
    data = save_checkpoint({"w": torch.randn(2000), "h": {"loss": [0.5] * 50}}, path,
                           kind=KIND).read_bytes()
    lengths = sorted(set(range(0, len(data), 211)) | {1, 10, 100, len(data) - 1})
    for n in lengths:
        path.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"t\.pt is not a readable flowmc-ebm checkpoint"):
            load_checkpoint(path, KIND)
    assert len(lengths) > 40


NPZ_FORMAT = "flowmc-ebm-trace-v1"


def good_trace_arrays():
    return {"format": np.array(NPZ_FORMAT), "samples": np.zeros((2, 3, 2), np.float32),
            "log_prob": np.zeros((2, 3), np.float32), "wall_time": np.array(1.0),
            "warmup": np.array(0), "thin": np.array(1), "kernel": np.array("MALA")}


def object_samples(path, obj):
    np.savez(path, **{**good_trace_arrays(), "samples": np.array([obj, 1], dtype=object)})


def object_stat(path, obj):
    np.savez(path, **{**good_trace_arrays(), "stats/accept_prob": np.array([obj], dtype=object)})


def pickle_named_npz(path, obj):
    path.write_bytes(pickle.dumps({"samples": obj}))


NPZ_WRITERS = [object_samples, object_stat, pickle_named_npz]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("write", NPZ_WRITERS, ids=lambda f: f.__name__)
def test_a_trace_with_pickled_objects_is_refused_and_never_runs(tmp_path, capsys, payload, write):
    assert payload_is_live(payload, tmp_path)
    path = tmp_path / "evil.npz"
    marker = tmp_path / "marker"
    write(path, payload(marker))
    with pytest.raises(ValueError, match=r"cannot read trace .*evil\.npz"):
        samplers.Trace.load(path)
    assert cli.main(["diagnose", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot read trace" in err and "evil.npz" in err
    assert not marker.exists()


def test_the_good_trace_arrays_do_load(tmp_path):
    # The writers above differ from a readable trace only by their payload.
    np.savez(tmp_path / "good.npz", **good_trace_arrays())
    assert samplers.Trace.load(tmp_path / "good.npz").samples.shape == (2, 3, 2)


def test_a_npy_file_given_as_a_trace_is_a_clear_error(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match=r"cannot read trace .*array\.npy"):
        samplers.Trace.load(Path(path))
