# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Reading fairseq and PyTorch Lightning checkpoints without executing pickled code.

A `.pt` / `.ckpt` / `.pth` file is a pickle: loading it with plain `pickle` (or `torch.load(weights_only=False)`) calls
whatever the file names, `os.system` included. `torch.load(weights_only=True)` is safe but refuses the configuration
objects that real fairseq checkpoints hold (omegaconf `DictConfig`, `argparse.Namespace`, fairseq `Dictionary`).

This module is a `pickle_module` for `torch.load`: torch keeps doing what it does well (zip and legacy formats,
storages, memory-mapping), while every global the pickle names goes through `Unpickler.find_class`, which resolves
only an allow-list (`allowed_globals()`):

- tensor reconstruction: `torch._utils._rebuild_*`, `torch.Size`, dtypes, storages, `torch.device`;
- plain containers and scalars: `collections.OrderedDict` / `defaultdict` / `Counter`, `set`, `frozenset`, `complex`,
  `bytearray`, `_codecs.encode` (how protocol 2 stores `bytes`), numpy arrays, scalars and dtypes of numbers, strings
  and dates (object and structured dtypes are refused: numpy would read pointers and offsets from the file);
- type references that omegaconf metadata holds as values (`typing.Any`, `dict`, `list`, `int`, ...);
- the configuration objects of fairseq checkpoints, materialised as inert stand-ins that hold the pickled state and
  run none of the original class's code (omegaconf `DictConfig`, `ListConfig`, value nodes and metadata,
  `argparse.Namespace`, fairseq `Dictionary`, fairseq/AV-HuBERT `*Config` dataclasses).

Anything else raises `UnsafeCheckpointError` naming the class, before the object is built. Nothing the pickle asks
to allocate by size (`bytes(n)`, `bytearray(n)`, a numpy array or scalar) may be larger than the pickle itself: real
pickles carry their data inline. After loading, the stand-ins are turned into plain data (`DictConfig` -> dict,
`ListConfig` -> list, `Namespace` -> dict, ...), so neither fairseq nor omegaconf is needed, or imported.

Usage: `load_checkpoint(path)`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import io
import math
import pickle
import sys
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy
import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for something refused here (a class or function outside the allow-list, a numpy dtype that
    holds or fakes object pointers, an allocation larger than the pickle); nothing of it was executed."""


# ---------------------------------------------------------------------------------------------------------------------
# Inert stand-ins for configuration objects
# ---------------------------------------------------------------------------------------------------------------------


class InertObject:
    """An allowed configuration object as inert data: what the pickle gave it, none of the original class's code.

    pickle builds an instance with `cls.__new__(cls)` (NEWOBJ) or `cls(*args)` (REDUCE), then hands it its state
    (BUILD); both are only recorded here.
    """

    class_path: str = ""
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.class_path}>"

    def attributes(self) -> dict:
        """The instance's pickled attributes (`__dict__`, plus `__slots__` values when the class has slots)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) from default reduction with __slots__
            return {**(state[0] or {}), **(state[1] or {})}
        return dict(state or {})

    def to_data(self, convert) -> Any:
        """Plain data for this object; `convert` converts nested values."""
        return {key: convert(value) for key, value in self.attributes().items()}


class _InertDictConfig(InertObject):
    """omegaconf `DictConfig`: state `{"_metadata", "_parent", "_content"}`, content `{key: node}` (or a string for
    a missing value / interpolation, or None)."""

    def to_data(self, convert) -> Any:
        content = self.attributes().get("_content")
        if isinstance(content, dict):
            return {convert(key): convert(value) for key, value in content.items()}
        return convert(content)


class _InertListConfig(InertObject):
    """omegaconf `ListConfig`: content is a list of nodes."""

    def to_data(self, convert) -> Any:
        content = self.attributes().get("_content")
        if isinstance(content, list):
            return [convert(value) for value in content]
        return convert(content)


class _InertValueNode(InertObject):
    """omegaconf value nodes (`AnyNode`, `IntegerNode`, ...): the value is `_val`."""

    def to_data(self, convert) -> Any:
        return convert(self.attributes().get("_val"))


class _InertMetadata(InertObject):
    """omegaconf node metadata: only meaningful inside omegaconf; kept as its fields."""


class _InertAttributes(InertObject):
    """Objects that are their attributes: `argparse.Namespace`, fairseq `Dictionary`, config dataclasses."""


_OMEGACONF_NODES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
    "EnumNode",
    "ValueNode",
)
_INERT_CLASSES: dict[str, type[InertObject]] = {
    "omegaconf.dictconfig.DictConfig": _InertDictConfig,
    "omegaconf.listconfig.ListConfig": _InertListConfig,
    "omegaconf.base.Metadata": _InertMetadata,
    "omegaconf.base.ContainerMetadata": _InertMetadata,
    **{f"omegaconf.nodes.{name}": _InertValueNode for name in _OMEGACONF_NODES},
    "argparse.Namespace": _InertAttributes,
    "fairseq.data.dictionary.Dictionary": _InertAttributes,
}
# fairseq / AV-HuBERT config dataclasses (`AVHubertConfig`, `AVHubertPretrainingConfig`, `FairseqConfig`, ...) may
# appear as values or as omegaconf `object_type`s; AV-HuBERT's modules are also importable without their package.
_CONFIG_MODULE_PREFIXES = ("fairseq.", "avhubert.", "av_hubert.")
_CONFIG_MODULES = ("hubert", "hubert_pretraining", "hubert_asr")


@functools.cache
def _inert_class(path: str, kind: type[InertObject]) -> type[InertObject]:
    """One stand-in class per original class path, so a stand-in says what it stands for."""
    return type(path.rsplit(".", 1)[-1], (kind,), {"class_path": path, "__module__": __name__})


def _inert_class_for(module: str, name: str) -> type[InertObject] | None:
    path = f"{module}.{name}"
    if path in _INERT_CLASSES:
        return _inert_class(path, _INERT_CLASSES[path])
    if name.endswith("Config") and (module.startswith(_CONFIG_MODULE_PREFIXES) or module in _CONFIG_MODULES):
        return _inert_class(path, _InertAttributes)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The allow-list
# ---------------------------------------------------------------------------------------------------------------------


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for `bytes`: a string and a codec name, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafeCheckpointError(f"_codecs.encode called with {type(text).__name__} and codec {encoding!r}")
    return text.encode(encoding)


_MULTIARRAY = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray  # numpy >= 2 / 1.x

# numpy kinds whose items are plain bytes: booleans, signed and unsigned integers, floats, complex numbers, byte strings,
# unicode strings, timedeltas and datetimes.
_PLAIN_DTYPE_KINDS = "biufcSUmM"


def _plain_dtype(value: Any) -> numpy.dtype:
    """`value` as a numpy dtype whose items are plain bytes, or `UnsafeCheckpointError` naming it.

    A pickled dtype carries its own flags and field offsets, and numpy believes them: an `object` dtype can say it
    holds no pointers (numpy then takes pointers from the file's raw bytes), a float dtype can say it holds some, a
    structured dtype can place a field past the end of its items. Each is memory corruption, and a crash when the
    array is freed. So only unstructured dtypes of the plain kinds pass, with exactly what numpy itself gives them.
    """
    dtype = numpy.dtype(value)
    if dtype.kind not in _PLAIN_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeCheckpointError(
            f"The checkpoint holds numpy data of dtype {dtype!r} ({dtype.name}). Only numbers, strings and dates are "
            "accepted: object and structured dtypes hold Python object pointers or field offsets that numpy would "
            "take from the file unchecked."
        )
    canonical = numpy.dtype(dtype.str)
    if (dtype.flags, dtype.itemsize, dtype.alignment) != (canonical.flags, canonical.itemsize, canonical.alignment):
        raise UnsafeCheckpointError(
            f"The checkpoint's numpy dtype {dtype!r} is forged: flags {dtype.flags}, item size {dtype.itemsize}, "
            f"alignment {dtype.alignment} where numpy's own has {canonical.flags}, {canonical.itemsize}, "
            f"{canonical.alignment} (a flag can make numpy treat raw bytes as object pointers)."
        )
    return dtype


def _check_allocation(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise UnsafeCheckpointError(
            f"The checkpoint asks for {what}: {size} bytes from a pickle of {max_bytes} bytes, which cannot hold them"
        )


def _sized_bytes(max_bytes: int, source: Any = b"", *args: Any) -> bytes:
    """`bytes(...)`, whose integer form `bytes(n)` allocates n zero bytes: never more than the pickle holds."""
    if isinstance(source, int):
        _check_allocation(source, max_bytes, f"`bytes({source})`")
    return bytes(source, *args)


def _sized_bytearray(max_bytes: int, source: Any = b"", *args: Any) -> bytearray:
    """`bytearray(...)`, whose integer form `bytearray(n)` allocates n zero bytes: never more than the pickle holds."""
    if isinstance(source, int):
        _check_allocation(source, max_bytes, f"`bytearray({source})`")
    return bytearray(source, *args)


class _CheckedArray(numpy.ndarray):
    """What `numpy.ndarray` resolves to. numpy pickles an array as `_reconstruct(ndarray, (0,), dtype)` (an empty
    array) followed by BUILD with `(version, shape, dtype, is_fortran, raw_bytes)`: BUILD's dtype is checked here
    before numpy reads the bytes. `to_plain_data` turns these back into plain arrays."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise UnsafeCheckpointError(
            "The checkpoint calls `numpy.ndarray(...)`, which numpy's own pickles never do: it would lay a dtype the "
            "file chose over uninitialised memory or a buffer the file chose"
        )

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafeCheckpointError(
                f"numpy array state is a {type(state).__name__}, expected ([version,] shape, dtype, is_fortran, data)"
            )
        _plain_dtype(state[-3])  # the dtype sits third from the end in both layouts
        super().__setstate__(state)


def _reconstruct_array(max_bytes: int, subtype: Any, shape: Any, dtype: Any) -> numpy.ndarray:
    """numpy's `_reconstruct(ndarray, shape, dtype)`: an uninitialised array (numpy's pickles ask for shape (0,))."""
    if subtype is not _CheckedArray:
        raise UnsafeCheckpointError(f"numpy `_reconstruct` asked for a {subtype!r}, expected numpy.ndarray")
    if not isinstance(shape, tuple) or not all(isinstance(length, int) and length >= 0 for length in shape):
        raise UnsafeCheckpointError(f"numpy `_reconstruct` shape {shape!r} is not a tuple of sizes")
    dtype = _plain_dtype(dtype)
    _check_allocation(math.prod(shape) * dtype.itemsize, max_bytes, f"a numpy array of shape {shape} and {dtype}")
    return _MULTIARRAY._reconstruct(_CheckedArray, shape, dtype)


def _numpy_scalar(max_bytes: int, dtype: Any, *data: Any) -> numpy.generic:
    """numpy's `scalar(dtype, raw_bytes)`; without bytes it allocates a zeroed item of the dtype's size."""
    dtype = _plain_dtype(dtype)
    _check_allocation(dtype.itemsize, max_bytes, f"a numpy scalar of {dtype}")
    return _MULTIARRAY.scalar(dtype, *data)


# The allowed constructors that allocate what their arguments ask for; `Unpickler` binds them to the pickle's size.
_SIZE_BOUNDED = (_sized_bytes, _sized_bytearray, _reconstruct_array, _numpy_scalar)


@functools.cache
def allowed_globals() -> dict[str, Any]:
    """Every `module.name` a checkpoint may reference, and what it resolves to (config objects are added by rule,
    see `_inert_class_for`)."""
    table: dict[str, Any] = {
        # Tensors. `torch.load` itself maps the legacy `torch.*Storage` names to its inert `StorageType`.
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch.storage.UntypedStorage": torch.UntypedStorage,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        # Plain containers and scalars.
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": collections.defaultdict,
        "collections.Counter": collections.Counter,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": _sized_bytearray,
        "builtins.slice": slice,
        "_codecs.encode": _codecs_encode,
        "numpy.ndarray": _CheckedArray,
        "numpy.dtype": numpy.dtype,
        # Type references stored as values in omegaconf metadata (`ref_type`, `object_type`, `key_type`, ...).
        **{f"builtins.{kind.__name__}": kind for kind in (dict, list, tuple, str, int, float, bool)},
        "builtins.bytes": _sized_bytes,
        **{f"typing.{name}": getattr(typing, name) for name in ("Any", "Dict", "List", "Tuple")},
    }
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_device_tensor_from_numpy",
    ):
        if hasattr(torch._utils, name):
            table[f"torch._utils.{name}"] = getattr(torch._utils, name)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            table[f"torch.{name}"] = getattr(torch, name)
    # numpy >= 2 pickles `numpy._core.multiarray`, numpy 1.x `numpy.core.multiarray`: accept both spellings.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{module}._reconstruct"] = _reconstruct_array
        table[f"{module}.scalar"] = _numpy_scalar
    return table


def resolve_global(module: str, name: str) -> Any:
    """What `module.name` stands for in a checkpoint, or `UnsafeCheckpointError` naming it."""
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names that protocol 2 writes, e.g. __builtin__.long
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    path = f"{module}.{name}"
    table = allowed_globals()
    if path in table:
        return table[path]
    inert = _inert_class_for(module, name)
    if inert is not None:
        return inert
    raise UnsafeCheckpointError(
        f"The checkpoint references `{path}`, which is not a tensor, a plain container or a known configuration "
        "object. Refusing to load it: unpickling it could run arbitrary code. Nothing from the file was executed."
    )


class Unpickler(pickle.Unpickler):
    """A `pickle.Unpickler` that resolves globals only through the allow-list, and lets nothing allocate more bytes
    than are left in `file` (see the module docstring)."""

    def __init__(self, file: io.IOBase, **kwargs: Any):
        super().__init__(file, **kwargs)
        position = file.tell()
        self.max_bytes = file.seek(0, io.SEEK_END) - position
        file.seek(position)

    def find_class(self, module: str, name: str) -> Any:
        resolved = resolve_global(module, name)
        if resolved in _SIZE_BOUNDED:
            return functools.partial(resolved, self.max_bytes)
        return resolved


def load(file: io.IOBase, **kwargs: Any) -> Any:
    """`pickle.load` through the restricted `Unpickler` (torch's legacy format reads a few plain pickles with it)."""
    return Unpickler(file, **kwargs).load()


# ---------------------------------------------------------------------------------------------------------------------
# Loading and materialising
# ---------------------------------------------------------------------------------------------------------------------


def to_plain_data(value: Any) -> Any:
    """Replaces the inert stand-ins in a loaded checkpoint by plain data: `DictConfig` -> dict, `ListConfig` -> list,
    value nodes -> their value, `Namespace` / `Dictionary` / config dataclasses -> dict of their attributes.
    Tensors and scalars are kept as they are, arrays become plain `numpy.ndarray`s. An object referenced several
    times is converted once (a pickle shares objects: a small file can nest 2**40 references to one tuple)."""
    memo: dict[int, Any] = {}

    def convert(item: Any) -> Any:
        if id(item) in memo:
            return memo[id(item)]
        if isinstance(item, _CheckedArray):
            return item.view(numpy.ndarray)
        if isinstance(item, numpy.dtype):  # a dtype kept as a value could still be forged
            return _plain_dtype(item)
        if isinstance(item, InertObject):
            memo[id(item)] = None  # a reference cycle through a config object resolves to None
            memo[id(item)] = result = item.to_data(convert)
            return result
        if isinstance(item, dict):
            result = collections.OrderedDict() if isinstance(item, collections.OrderedDict) else {}
            memo[id(item)] = result
            for key, element in item.items():
                result[convert(key)] = convert(element)
            return result
        if isinstance(item, list):
            result = []
            memo[id(item)] = result
            result.extend(convert(element) for element in item)
            return result
        if type(item) is tuple:
            memo[id(item)] = result = tuple(convert(element) for element in item)
            return result
        return item

    return convert(value)


def _is_torchscript_archive(path: Path) -> bool:
    # `torch.load` hands TorchScript archives to `torch.jit.load`, which this module cannot restrict.
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def load_checkpoint(path: str | Path) -> Any:
    """
    Loads a PyTorch checkpoint (`torch.save` zip or legacy format) without executing pickled code: tensors on the
    CPU (memory-mapped for zip files), configuration objects as plain data (see the module docstring).

    Raises:
        FileNotFoundError: `path` does not exist.
        IsADirectoryError: `path` is a folder.
        UnsafeCheckpointError: the file references a class or function outside the allow-list, holds numpy data of an
            object or structured dtype, asks for more memory than it holds, or is a TorchScript archive; the message
            names the file and what was refused.
        ValueError: the file is not a readable checkpoint (truncated, corrupt, malformed); the message names it.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint {path} is a folder; give the checkpoint file in it (.pt, .ckpt, .pth)")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip and _is_torchscript_archive(path):
            raise UnsafeCheckpointError("a TorchScript archive, not a checkpoint of tensors; refusing to load it")
        checkpoint = torch.load(
            path, map_location="cpu", pickle_module=sys.modules[__name__], weights_only=False, mmap=is_zip
        )
        return to_plain_data(checkpoint)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"{path}: {error}") from None
    except Exception as error:  # whatever a malformed file makes fail (EOFError, TypeError, RecursionError, ...)
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {type(error).__name__}: {error}") from error


__all__ = ["InertObject", "UnsafeCheckpointError", "Unpickler", "allowed_globals", "load", "load_checkpoint", "to_plain_data"]
