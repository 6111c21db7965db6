"""Reading checkpoints without executing pickled code: fairseq's configuration objects become plain data, anything
outside the allow-list is refused by name before it runs."""

import collections
import os
import pickletools
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from convert_fixtures import TINY, avhubert_state_dict, fairseq_checkpoint, fairseq_config, save_fairseq_checkpoint
from mtsk_convert.safe_unpickle import UnsafeCheckpointError, load_checkpoint, resolve_global


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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(corrupt)
