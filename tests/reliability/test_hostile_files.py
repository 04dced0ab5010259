"""Hostile or broken trace files, streamed directories and checkpoints are refused with one line
naming the file, before their contents are read and within bounded memory: symbolic links, headers
declaring 10^12 elements, a zip bomb, manifests lying about counts, shapes and files, duplicate
chunk indices, non-UTF-8 and deeply nested JSON, objects, foreign files. One subprocess reads the
worst of them and checks its peak RSS."""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import samplers
from flowmc_ebm.checkpoint import load_checkpoint, save_checkpoint
from samplers import trace as trace_module

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 64 << 20  # the read limit these tests run under (a zip bomb is refused against it)


@pytest.fixture(autouse=True)
def read_limit():
    previous = trace_module.set_read_limit(LIMIT)
    yield
    trace_module.set_read_limit(previous)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    samplers.sample(samplers.MALA(lambda x: -0.5 * x.pow(2).sum(-1), 0.5), torch.zeros(3, 2), 20,
                    out=out, chunk_size=4, progress=False,
                    generator=torch.Generator().manual_seed(0))  # 5 chunks of 4 draws
    return out


def good_arrays():
    return {"format": np.array("flowmc-ebm-trace-v1"), "samples": np.zeros((2, 3, 2), np.float32),
            "log_prob": np.zeros((2, 3), np.float32), "wall_time": np.array(1.0),
            "warmup": np.array(0), "thin": np.array(1), "kernel": np.array("MALA")}


def npz_bytes(arrays, compress=False):
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def patch_sizes(data: bytes, member: str, size: int) -> bytes:
    """Rewrite the uncompressed size ``member`` declares, in its local and central headers."""
    data = bytearray(data)
    name = member.encode()
    local = data.find(b"PK\x03\x04" + b"")
    while local >= 0:
        n = struct.unpack_from("<H", data, local + 26)[0]
        if data[local + 30: local + 30 + n] == name:
            struct.pack_into("<I", data, local + 22, size)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        n = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46: central + 46 + n] == name:
            struct.pack_into("<I", data, central + 24, size)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def npy_header(shape, dtype="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_members():
    with zipfile.ZipFile(io.BytesIO(npz_bytes(good_arrays()))) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def zip_bomb(path: Path, size: int = 1 << 30):
    """A 1 GiB zero array deflated to ~1 MB, its sizes declared honestly."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("samples.npy", "w", force_zip64=True) as f:
            f.write(npy_header((size // 4,)))
            block = bytes(1 << 24)
            for _ in range(size // len(block)):
                f.write(block)
        for name, data in good_members().items():
            if name != "samples.npy":
                zf.writestr(name, data)


# --- single trace files: (name, writer(path), what the message must say) -------------------------

def file_case(write, expect):
    return write, expect


def w_bytes(data):
    return lambda p: p.write_bytes(data)


def w_members(**changes):
    def write(p):
        members = good_members()
        members.update({k: v for k, v in changes.items() if v is not None})
        for k in [k for k, v in changes.items() if v is None]:
            del members[k]
        p.write_bytes(zip_of(members))
    return write


FILE_CASES = {
    "header declaring 10^12 elements": (
        w_members(**{"samples.npy": npy_header((10**12,)) + bytes(48)}),
        "declares shape (1000000000000,) of float32 (4000000000000 bytes) but holds 48 bytes"),
    "zip member declaring 3.9 GB": (
        lambda p: p.write_bytes(patch_sizes(npz_bytes(good_arrays()), "samples.npy", 3_900_000_000)),
        "above the read limit"),
    "member declaring fewer bytes than it holds": (
        lambda p: p.write_bytes(patch_sizes(npz_bytes(good_arrays()), "samples.npy", 100)),
        "Bad CRC-32 for file 'samples.npy'"),
    "header shape larger than the data": (
        w_members(**{"samples.npy": npy_header((2, 3, 4)) + bytes(48)}), "but holds 48 bytes"),
    "object array": (w_members(**{"samples.npy": npy_header((2,), "|O") + b"\x80\x04N."}),
                     "holds Python objects"),
    "a non-.npy member": (w_members(**{"evil.txt": b"hello"}), "holds 'evil.txt', not an .npy"),
    "too many members": (w_members(**{f"stats/s{i}.npy": good_members()["log_prob.npy"]
                                      for i in range(300)}), "holds 307 arrays"),
    "npy version 9": (w_members(**{"samples.npy": b"\x93NUMPY\x09\x00" + bytes(40)}),
                      "version"),
    "no format entry": (w_members(**{"format.npy": None}), "no or unknown 'format' entry"),
    "samples of the wrong rank": (
        w_members(**{"samples.npy": good_members()["log_prob.npy"]}), "(chains, draws, *event)"),
    "bare .npy array": (lambda p: np.save(open(p, "wb"), np.zeros(3)),
                        "received a bare .npy array"),
    "CSV text": (w_bytes(b"x,y\n1,2\n3,4\n"), "not a flowmc-ebm trace (an .npz archive): it starts"),
    "empty file": (w_bytes(b""), "the file is empty"),
    "random bytes": (w_bytes(np.random.default_rng(0).bytes(5000)), "not a flowmc-ebm trace"),
    "truncated archive": (lambda p: p.write_bytes(npz_bytes(good_arrays())[:700]), "cannot read"),
    "zip with a bad CRC": (
        lambda p: p.write_bytes(npz_bytes(good_arrays()).replace(
            npy_header((2, 3, 2)) + bytes(8), npy_header((2, 3, 2)) + b"\x01" * 8, 1)),
        "cannot read"),
}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_a_hostile_trace_file_is_one_line_naming_it(tmp_path, case):
    write, expect = FILE_CASES[case]
    path = tmp_path / "t.npz"
    write(path)
    with pytest.raises(ValueError) as info:
        samplers.Trace.load(path)
    message = str(info.value)
    assert "\n" not in message and f"cannot read trace {path}" in message, message
    assert expect in message, message
    assert "allow_pickle" not in message


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    zip_bomb(path)
    assert path.stat().st_size < 10 << 20
    return path


def test_a_zip_bomb_is_refused_before_it_is_decompressed(bomb):
    path = bomb
    with pytest.raises(ValueError, match=r"bomb\.npz: declares \d+ bytes once decompressed, above "
                                         r"the read limit of 67108864 bytes"):
        samplers.Trace.load(path)


def test_memory_running_out_while_reading_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    path.write_bytes(npz_bytes(good_arrays()))

    def no_memory(n):
        raise MemoryError

    monkeypatch.setattr(trace_module, "bytearray", no_memory, raising=False)
    with pytest.raises(ValueError, match=rf"cannot read trace {path}: not enough memory"):
        samplers.Trace.load(path)


# --- streamed directories: (damage(dir), what the message must say) ------------------------------

def manifest_edit(**changes):
    def damage(d):
        m = json.loads((d / "manifest.json").read_text())
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        (d / "manifest.json").write_text(json.dumps(m))
    return damage


def symlink_chunk(target):
    def damage(d):
        chunk = d / "chunk-000001.npz"
        if target == "a good copy":
            shutil.copy(chunk, d.parent / "copy.npz")
            dest = d.parent / "copy.npz"
        else:
            dest = Path(target)
        chunk.unlink()
        chunk.symlink_to(dest)
    return damage


def replace_manifest(data):
    def damage(d):
        (d / "manifest.json").write_bytes(data)
    return damage


def copy_chunk(src, dst):
    def damage(d):
        shutil.copy(d / src, d / dst)
    return damage


def foreign_chunk(d):
    arrays = dict(np.load(d / "chunk-000002.npz"))
    arrays["kernel"] = np.array("HMC(step_size=0.1)")
    (d / "chunk-000002.npz").write_bytes(npz_bytes(arrays))


def short_chunk(d):
    arrays = dict(np.load(d / "chunk-000001.npz"))
    for k in list(arrays):
        if arrays[k].ndim >= 2:
            arrays[k] = arrays[k][:, :3]
    (d / "chunk-000001.npz").write_bytes(npz_bytes(arrays))


def chunk_is_a_directory(d):
    (d / "chunk-000004.npz").unlink()
    (d / "chunk-000004.npz").mkdir()


def symlinked_manifest(d):
    (d / "manifest.json").rename(d.parent / "elsewhere.json")
    (d / "manifest.json").symlink_to(d.parent / "elsewhere.json")


DIR_CASES = {
    "chunk symlinked to a good copy outside": (symlink_chunk("a good copy"), "is a symbolic link"),
    "chunk symlinked to /etc/passwd": (symlink_chunk("/etc/passwd"), "is a symbolic link"),
    "dangling symlinked chunk": (symlink_chunk("/nonexistent/x.npz"), "is a symbolic link"),
    "symlinked manifest": (symlinked_manifest, "manifest.json is a symbolic link"),
    "chunk that is a directory": (chunk_is_a_directory, "is not a regular file"),
    "non-UTF-8 manifest": (replace_manifest(b'{"format": "\xff\xfe"}'), "not UTF-8 text"),
    "deeply nested manifest": (replace_manifest(b"[" * 200_000 + b"]" * 200_000),
                               "nested too deeply"),
    "2 MB manifest": (replace_manifest(b" " * (2 << 20) + b"{}"), "more than a manifest's"),
    "manifest that is a list": (replace_manifest(b"[1, 2]"), "expected a JSON object"),
    "manifest lying about n_draws": (manifest_edit(n_draws=21), "lists 21 draws but its chunks hold 20"),
    "manifest listing more chunks": (manifest_edit(n_chunks=7), "lists 7 chunks but holds 5"),
    "manifest with negative n_chunks": (manifest_edit(n_chunks=-1), "'n_chunks' is '-1'"),
    "manifest lying about chains": (manifest_edit(layout={"n_chains": 4}), "differs from the manifest"),
    "manifest lying about the event shape": (manifest_edit(layout={"event_shape": [3]}),
                                             "differs from the manifest"),
    "manifest with an unknown dtype": (manifest_edit(layout={"dtype": "object"}), "'layout' is"),
    "manifest with thin as text": (manifest_edit(thin="2"), "'thin' is '2', expected an int"),
    "manifest with complete as text": (manifest_edit(complete="yes"), "'complete' is 'yes'"),
    "manifest pointing its state outside": (manifest_edit(state="../../etc/passwd"),
                                            "'state' is '../../etc/passwd'"),
    "manifest lying about the chunk size": (manifest_edit(settings={"chunk_size": 2}),
                                            "holds 4 draws; this run's chunks hold 2"),
    "duplicate chunk index (a chunk copied over the next)": (
        copy_chunk("chunk-000000.npz", "chunk-000001.npz"), "its first draw is 0, expected 4"),
    "chunk of another run": (foreign_chunk, "written by another run"),
    "chunk shorter than the run's chunks": (short_chunk, "holds 3 draws; this run's chunks hold 4"),
    "a gap in the chunk numbers": (lambda d: (d / "chunk-000002.npz").unlink(), "missing chunk file"),
}


@pytest.mark.parametrize("case", DIR_CASES, ids=list(DIR_CASES))
def test_a_hostile_streamed_directory_is_one_line_naming_the_file(tmp_path, good_run, case):
    damage, expect = DIR_CASES[case]
    d = tmp_path / "run"
    shutil.copytree(good_run, d, symlinks=True)
    damage(d)
    with pytest.raises(ValueError) as info:
        samplers.open_trace(d).load()
    message = str(info.value)
    assert "\n" not in message and str(d) in message, message
    assert expect in message, message


def test_a_trace_file_the_user_names_through_a_link_reads(tmp_path):
    (tmp_path / "t.npz").write_bytes(npz_bytes(good_arrays()))
    (tmp_path / "latest.npz").symlink_to(tmp_path / "t.npz")
    assert samplers.Trace.load(tmp_path / "latest.npz").samples.shape == (2, 3, 2)


def test_the_undamaged_copy_reads(tmp_path, good_run):
    d = tmp_path / "run"
    shutil.copytree(good_run, d, symlinks=True)
    assert samplers.open_trace(d).load().samples.shape == (3, 20, 2)


def test_a_symlinked_or_oversized_checkpoint_is_refused(tmp_path):
    good = save_checkpoint({"w": torch.zeros(10)}, tmp_path / "good.pt", kind="k")
    (tmp_path / "link.pt").symlink_to(good)
    with pytest.raises(ValueError, match=r"link\.pt is a symbolic link"):
        load_checkpoint(tmp_path / "link.pt", "k")
    big = save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "big.pt", kind="k")
    trace_module.set_read_limit(2000)
    with pytest.raises(ValueError, match=r"big\.pt declares \d+ bytes once decompressed, above"):
        load_checkpoint(big, "k")
    trace_module.set_read_limit(LIMIT)
    assert load_checkpoint(big, "k")["w"].shape == (1000,)


WORST = """
import json, resource, sys
import samplers
from samplers import trace
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
faults = []
for path in sys.argv[1:]:
    try:
        samplers.Trace.load(path)
    except ValueError as err:
        faults.append(str(err))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "faults": faults}))
"""


def test_the_worst_files_are_refused_within_bounded_memory(tmp_path, good_run, bomb):
    """Under the default read limit (half the available memory), a 1 GiB zip bomb (refused by its
    compression ratio), a 10^12 element header and a 200 000-deep JSON manifest each raise one
    line, and reading all three grows the process by under 50 MB."""
    big = tmp_path / "big.npz"
    FILE_CASES["header declaring 10^12 elements"][0](big)
    nested = tmp_path / "nested"
    shutil.copytree(good_run, nested)
    replace_manifest(b"[" * 200_000 + b"]" * 200_000)(nested)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", WORST, str(bomb), str(big), str(nested)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert len(result["faults"]) == 3 and all("\n" not in f for f in result["faults"])
    grown_mb = (result["peak_kb"] - result["base_kb"]) / 1024
    print(f"peak RSS {result['peak_kb'] / 1024:.0f} MB, grown by {grown_mb:.1f} MB")
    assert grown_mb < 50, result
    assert "refused as a zip bomb" in result["faults"][0]
