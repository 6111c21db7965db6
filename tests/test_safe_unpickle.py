"""Reading checkpoints without executing pickled code: fairseq's configuration objects become plain data, anything
outside the allow-list is refused by name before it runs."""

import collections
import contextlib
import json
import os
import pickle
import pickletools
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct, scalar

from mtsk_convert.safe_unpickle import UnsafeCheckpointError, load_checkpoint, resolve_global

from convert_fixtures import TINY, avhubert_state_dict, fairseq_checkpoint, fairseq_config, save_fairseq_checkpoint


def pickled_globals(path) -> set[str]:
    """The `module.name` globals a zip checkpoint's pickle references (protocol 2: GLOBAL opcodes)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    return {arg.replace(" ", ".") for opcode, arg, _ in pickletools.genops(data) if opcode.name == "GLOBAL"}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_fairseq_objects_become_plain_data(tmp_path, zip_format):
    state = avhubert_state_dict(**TINY)
    path = tmp_path / "checkpoint.pt"
    save_fairseq_checkpoint(
        fairseq_checkpoint(state, fairseq_config(**TINY), as_dictconfig=True),
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    if zip_format:  # the file names the real classes, as a checkpoint re-saved after fairseq loaded it does
        assert {
            "omegaconf.dictconfig.DictConfig",
            "omegaconf.nodes.AnyNode",
            "omegaconf.base.ContainerMetadata",
            "omegaconf.listconfig.ListConfig",
            "fairseq.data.dictionary.Dictionary",
            "typing.Any",
            "collections.defaultdict",
            "numpy.dtype",
        } <= pickled_globals(path)

    checkpoint = load_checkpoint(path)
    assert "omegaconf" not in sys.modules and "fairseq" not in sys.modules
    cfg = checkpoint["cfg"]
    assert type(cfg) is dict and type(cfg["model"]) is dict
    assert cfg["model"]["encoder_layers"] == TINY["layers"] and cfg["model"]["layer_norm_first"] is True
    assert cfg["task"]["labels"] == ["km"] and cfg["model"]["resnet_weights"] is None
    dictionary = checkpoint["task_state"]["dictionaries"][0]
    assert dictionary["symbols"][:4] == ["<s>", "<pad>", "</s>", "<unk>"] and dictionary["eos_index"] == 2
    history = checkpoint["optimizer_history"][0]
    assert history["num_updates"] == 600000 and history["lr_scheduler_state"]["best"] == np.float64(2.5)
    assert isinstance(checkpoint["extra_state"]["metrics"], collections.OrderedDict)
    assert isinstance(checkpoint["model"], collections.OrderedDict) and list(checkpoint["model"]) == list(state)
    for key, tensor in state.items():
        assert torch.equal(checkpoint["model"][key], tensor), key


def test_namespace_args_and_shared_storage(tmp_path):
    import argparse

    base = torch.arange(12.0).view(3, 4)
    path = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(encoder_layers=3, arch="av_hubert"), "model": {"w": base, "row": base[1]}}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["args"] == {"encoder_layers": 3, "arch": "av_hubert"}
    assert torch.equal(checkpoint["model"]["row"], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert checkpoint["model"]["row"].untyped_storage().data_ptr() == checkpoint["model"]["w"].untyped_storage().data_ptr()


class RunsACommand:
    """Unpickling this calls `os.system(command)`."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class BuildsAPopen:
    def __reduce__(self):
        return subprocess.Popen, (["touch", "never"],)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_command_in_the_pickle_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    checkpoint = {"model": {"w": torch.ones(2)}, "cfg": {"model": {"hook": RunsACommand(f"touch {marker}")}}}
    path = tmp_path / "evil.pt"
    torch.save(checkpoint, path, pickle_protocol=protocol)

    with pytest.raises(UnsafeCheckpointError, match=rf"{os.system.__module__}\.system") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "Nothing from the file was executed" in str(error.value)
    assert not marker.exists()
    # The same file really does run the command when unpickled without restriction (the test is not vacuous).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_other_classes_are_refused_by_name(tmp_path):
    path = tmp_path / "popen.pt"
    torch.save({"extra_state": [BuildsAPopen()]}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"subprocess\.Popen"):
        load_checkpoint(path)
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("os", "system"), ("torch", "load"), ("typing", "cast")]:
        with pytest.raises(UnsafeCheckpointError, match=rf"`{module}\.{name}`"):
            resolve_global(module, name)
    # A config-looking name outside the fairseq/AV-HuBERT modules is no config object.
    with pytest.raises(UnsafeCheckpointError, match=r"mypackage\.EvilConfig"):
        resolve_global("mypackage", "EvilConfig")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive"):
        load_checkpoint(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^Checkpoint {tmp_path / 'absent.pt'} does not exist$"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(IsADirectoryError, match=rf"^Checkpoint {tmp_path} is a folder; give the checkpoint file in it"):
        load_checkpoint(tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(corrupt)


# ---------------------------------------------------------------------------------------------------------------------
# Crafted files: forged numpy dtypes, allocation bombs, malformed pickles. Payloads are made here, never stored.
# ---------------------------------------------------------------------------------------------------------------------

LOAD_EACH = """
import json, sys
from mtsk_convert.safe_unpickle import load_checkpoint
for path in sys.argv[1:]:
    try:
        load_checkpoint(path)
        print(json.dumps("loaded"), flush=True)
    except Exception as error:
        print(json.dumps(f"{type(error).__name__}: {error}"), flush=True)
"""


def load_each_in_a_subprocess(paths: list[Path]) -> list[str]:
    """`load_checkpoint` on each path in a fresh interpreter, so that a crash fails the test instead of killing
    pytest: per path "loaded" or "ErrorType: message"."""
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_EACH, *map(str, paths)],
        capture_output=True, text=True, timeout=300, cwd=paths[0].parent,  # a core dump lands there, not in the repo
    )
    assert completed.returncode == 0, f"the loader died (exit status {completed.returncode}): {completed.stderr[-2000:]}"
    return [json.loads(line) for line in completed.stdout.splitlines()]


UNPICKLE_STDIN = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fails the block when it runs longer than `seconds` (the alarm interrupts Python code, not one C call)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Reduces:
    """Pickles as the call `function(*arguments)`, then BUILD with `state` when given: any call a crafted file makes."""

    def __init__(self, function, arguments, state=None):
        self.function, self.arguments, self.state = function, arguments, state

    def __reduce__(self):
        return (self.function, self.arguments) if self.state is None else (self.function, self.arguments, self.state)


def pickled_dtype(spec: str, flags: int, names=None, fields=None, item_size: int = -1) -> Reduces:
    """A numpy dtype as its pickle rebuilds it, `numpy.dtype(spec)` then `__setstate__`, with the flags and fields the
    file chooses (numpy itself gives `object` flags 63, floats 0)."""
    return Reduces(np.dtype, (spec, False, True), (3, "|", None, names, fields, item_size, -1, flags))


def pickled_array(dtype, raw: bytes, count: int) -> Reduces:
    """An array as numpy pickles it: an empty `_reconstruct`ed array, then BUILD with shape, dtype and raw bytes."""
    return Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (count,), dtype, False, raw))


FORGED_NUMPY_DATA = {
    # numpy's own object dtype, over raw bytes instead of the list of objects numpy writes
    "object dtype over raw bytes": (pickled_array(pickled_dtype("O8", flags=63), b"A" * 64, 8), "dtype('O')"),
    # an object dtype whose flags say it holds no pointers: numpy reads 0x4141414141414141 as an object
    "object dtype claiming no pointers": (pickled_array(pickled_dtype("O8", flags=0), b"A" * 64, 8), "dtype('O')"),
    # flags saying "holds references" but not "pickled as a list": raw bytes become pointers numpy frees
    "object dtype read from bytes": (pickled_array(pickled_dtype("O8", flags=1), b"A" * 64, 8), "dtype('O')"),
    "float dtype claiming pointers": (pickled_array(pickled_dtype("f8", flags=1), b"A" * 64, 8), "forged: flags 1"),
    "structured dtype with an object field": (
        pickled_array(
            pickled_dtype("V16", 27, ("a", "b"), {"a": (np.dtype("f8"), 0), "b": (np.dtype("O"), 8)}, 16),
            b"A" * 32,
            2,
        ),
        "dtype([('a', '<f8'), ('b', 'O')])",
    ),
    "structured dtype with a field past its item": (
        pickled_array(pickled_dtype("V1", 16, ("a",), {"a": (np.dtype("f8"), 1000)}, 1), b"A" * 4, 4),
        "structured",
    ),
    "object scalar": (Reduces(scalar, (pickled_dtype("O8", flags=0), b"A" * 8)), "dtype('O')"),
    "ndarray called over a buffer": (
        Reduces(np.ndarray, ((8,), pickled_dtype("O8", flags=1), b"A" * 64)),
        "calls `numpy.ndarray(...)`",
    ),
}


def test_forged_numpy_dtypes_are_refused_by_name_and_never_crash(tmp_path):
    paths = []
    for index, (payload, _) in enumerate(FORGED_NUMPY_DATA.values()):
        paths.append(tmp_path / f"forged-{index}.pt")
        torch.save({"model": {"w": torch.ones(2)}, "extra_state": {"metrics": payload}}, paths[-1])
    outcomes = load_each_in_a_subprocess(paths)

    assert len(outcomes) == len(paths)
    for (case, (_, expected)), path, outcome in zip(FORGED_NUMPY_DATA.items(), paths, outcomes):
        assert outcome.startswith(f"UnsafeCheckpointError: {path}: ") and expected in outcome, (case, outcome)
    # Unpickled without restriction, the "object dtype read from bytes" array crashes the process (not vacuous).
    payload = pickle.dumps(FORGED_NUMPY_DATA["object dtype read from bytes"][0], protocol=2)
    crash = subprocess.run([sys.executable, "-c", UNPICKLE_STDIN], input=payload, capture_output=True, cwd=tmp_path)
    assert crash.returncode == -signal.SIGSEGV


def test_plain_numpy_data_still_loads(tmp_path):
    values = {
        "floats": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "words": np.array(["ab", "cde"]),
        "dates": np.array(["2024-01-02"], dtype="datetime64[D]"),
        "best": np.float64(2.5),
        "dtype": np.dtype("int16"),
    }
    path = tmp_path / "np.pt"
    torch.save(values, path)
    loaded = load_checkpoint(path)
    for name in ("floats", "fortran", "words", "dates"):
        assert type(loaded[name]) is np.ndarray and loaded[name].dtype == values[name].dtype, name
        np.testing.assert_array_equal(loaded[name], values[name])
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["best"] == np.float64(2.5) and loaded["dtype"] == np.dtype("int16")


def shared_tuples(depth: int) -> tuple:
    """t0 = ("leaf",), t(n+1) = (t(n), t(n)): pickled in a few bytes per level, 2**depth leaves when copied out."""
    node = ("leaf",)
    for _ in range(depth):
        node = (node, node)
    return node


def test_shared_tuples_are_converted_once(tmp_path):
    path = tmp_path / "tuples.pt"
    torch.save({"model": {}, "cfg": {"shared": shared_tuples(40)}}, path)
    assert path.stat().st_size < 4000
    with time_limit(5):  # copying 2**40 leaves never ends
        node = load_checkpoint(path)["cfg"]["shared"]
    for _ in range(40):
        assert node[0] is node[1]
        node = node[0]
    assert node == ("leaf",)


ALLOCATION_BOMBS = {
    "bytes": (Reduces(bytes, (2**33,)), "`bytes(8589934592)`: 8589934592 bytes from a pickle of"),
    "bytearray": (Reduces(bytearray, (2**33,)), "`bytearray(8589934592)`"),
    # without data numpy zero-fills an item of the dtype's size: 2 GB and about 20 s here
    "numpy scalar": (Reduces(scalar, (np.dtype("U500000000"),)), "a numpy scalar of <U500000000"),
    "numpy array": (Reduces(_reconstruct, (np.ndarray, (2**31,), b"f8")), "a numpy array of shape (2147483648,)"),
}


@pytest.mark.parametrize("bomb", ALLOCATION_BOMBS, ids=lambda name: name.replace(" ", "_"))
def test_allocations_larger_than_the_pickle_are_refused(tmp_path, bomb):
    payload, expected = ALLOCATION_BOMBS[bomb]
    path = tmp_path / "bomb.pt"
    torch.save({"model": {}, "extra_state": payload}, path)
    with time_limit(5), pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: The checkpoint asks for") and expected in str(error.value)


def test_bytes_as_pickle_writes_them_still_load(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"blob": b"\x00\x01" * 100, "buffer": bytearray(b"abc")}, plain)
    assert load_checkpoint(plain) == {"blob": b"\x00\x01" * 100, "buffer": bytearray(b"abc")}


def legacy_checkpoint(path: Path, object_pickle: bytes) -> Path:
    """A checkpoint in torch's legacy (pre-zip) format whose object is the pickle `object_pickle`, without storages."""
    header = (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, {"little_endian": True})
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header) + object_pickle + pickle.dumps([]))
    return path


def test_malformed_pickles_fail_with_one_error_naming_the_file(tmp_path):
    depth = 100_000  # lists nested this deep: pickle builds them without recursing, converting them recurses
    nested = legacy_checkpoint(tmp_path / "nested.pt", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    with pytest.raises(ValueError, match=rf"^{nested} is not a readable PyTorch checkpoint: RecursionError"):
        load_checkpoint(nested)

    wrong_call = tmp_path / "wrong_call.pt"
    torch.save({"model": Reduces(collections.OrderedDict, (5,))}, wrong_call)
    with pytest.raises(ValueError, match=rf"^{wrong_call} is not a readable PyTorch checkpoint: TypeError"):
        load_checkpoint(wrong_call)

    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"w": torch.ones(4)}}, truncated, _use_new_zipfile_serialization=False)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"^{truncated} is not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
