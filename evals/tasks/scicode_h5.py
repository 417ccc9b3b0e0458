"""SciCode's ``test_data.h5``: read it as the official harness does, and write files in the same layout.

Layout (what ``scicode.parse.parse.process_hdf5_to_tuple(step_id, test_num, h5py_file)`` reads): one
group per step id (``"1.1"``), inside it one group per test case ``test1``, ``test2``, ... (1-based),
inside that one entry per value the test compares with: a single entry -> ``target`` is that value, several
(``var1``, ``var2``, ...) -> ``target`` is the tuple of them, in the group's key order. An entry is

- a dataset: arrays and scalars as numpy values, strings as bytes (decoded to ``str``);
- a group holding ``list``: a list of that subgroup's datasets (key order);
- a group holding ``sparse_matrix``: a scipy COO (``row``/``col``), BSR (``blocksize``) or CSR matrix;
- any other group: a dict of its datasets (keys that parse as floats become floats; string values
  are decoded; a subgroup is a sparse matrix).

:func:`read_h5_targets` mirrors that reader; :func:`write_h5_targets` writes Python values in that
layout, storing values as SciCode's own ``save_data_to_hdf5`` does (lists become arrays where numpy
can make one), so a file written here reads back as the official one would. A test case the gold code
cannot run is written as an empty test group with the attribute ``emreason_broken`` (ignored by the
official reader) so that both grading paths skip it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emreason.atomic_io import atomic_target

BROKEN_ATTR = "emreason_broken"


class H5TargetsError(ValueError):
    """The h5 file is missing, unreadable, or lacks a step / test case (the message names which)."""


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is in the evals extra
        raise ImportError(
            "reading SciCode's test_data.h5 needs h5py: pip install 'emreason[evals]'"
        ) from error
    return h5py


def _decode(value: Any) -> Any:
    return value.decode("utf-8", errors="strict") if isinstance(value, bytes) else value


def _sparse(group: Any) -> Any:
    from scipy.sparse import bsr_matrix, coo_matrix, csr_matrix

    data, shape = group["data"][()], tuple(group["shape"][()])
    if "row" in group and "col" in group:
        return coo_matrix((data, (group["row"][()], group["col"][()])), shape=shape)
    if "blocksize" in group:
        blocksize = tuple(group["blocksize"][()])
        return bsr_matrix((data, group["indices"][()], group["indptr"][()]), shape=shape, blocksize=blocksize)
    return csr_matrix((data, group["indices"][()], group["indptr"][()]), shape=shape)


def _dict(group: Any) -> dict:
    h5py = _h5py()
    out: dict = {}
    for key, node in group.items():
        if isinstance(node, h5py.Group):
            out[key] = _sparse(node["sparse_matrix"])
            continue
        value = node[()]
        if isinstance(value, bytes):
            out[key] = _decode(value)
            continue
        try:
            out[float(key)] = value
        except ValueError:
            out[key] = value
    return out


def _datagroup(group: Any) -> Any:
    # As the official reader: the first key decides (list / sparse matrix / dict).
    for key in group.keys():
        if key == "list":
            return [group[key][k][()] for k in group[key].keys()]
        if key == "sparse_matrix":
            return _sparse(group[key])
        return _dict(group)
    return {}


def _entry(node: Any) -> Any:
    h5py = _h5py()
    if isinstance(node, h5py.Dataset):
        return _decode(node[()])
    return _datagroup(node)


def read_h5_targets(path: str | os.PathLike, tests_per_step: Mapping[str, int]) -> dict[str, list[Any]]:
    """``{step_id: [target of test 1, ...]}`` for every step in ``tests_per_step`` (step id -> count).

    A test case written as broken (see module doc) comes back as ``{"__broken_test__": reason}``.
    Raises :class:`H5TargetsError` naming the file, step or test case that is missing or unreadable.
    """
    from emreason.evals.tasks.scicode import BROKEN

    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise H5TargetsError(f"SciCode targets file {path} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise H5TargetsError(f"{path} is not a readable HDF5 file ({error})") from error
    missing_steps = [step for step in tests_per_step if step not in handle]
    if missing_steps:
        handle.close()
        raise H5TargetsError(f"{path} has no group for step(s) {', '.join(missing_steps)}")
    out: dict[str, list[Any]] = {}
    with handle:
        for step_id, count in tests_per_step.items():
            values = []
            for number in range(1, count + 1):
                name = f"{step_id}/test{number}"
                if name not in handle:
                    raise H5TargetsError(f"{path}: step {step_id} has no test{number} (needs {count} tests)")
                group = handle[name]
                try:
                    if not isinstance(group, h5py.Group):
                        raise H5TargetsError(f"{path}: {name} is not a group")
                    if BROKEN_ATTR in group.attrs:
                        values.append({BROKEN: _decode(group.attrs[BROKEN_ATTR])})
                        continue
                    keys = list(group.keys())
                    entries = [_entry(group[key]) for key in keys]
                except (OSError, KeyError, ValueError) as error:
                    if isinstance(error, H5TargetsError):
                        raise
                    raise H5TargetsError(
                        f"{path}: cannot read step {step_id} test{number} ({error})"
                    ) from error
                values.append(entries[0] if len(entries) == 1 else tuple(entries))
            out[step_id] = values
    return out


def _is_sparse(value: Any) -> bool:
    return type(value).__module__.startswith("scipy.sparse")


def _write_sparse(parent: Any, name: str, matrix: Any) -> None:
    import numpy as np

    group = parent.create_group(name).create_group("sparse_matrix")
    group.create_dataset("data", data=matrix.data)
    group.create_dataset("shape", data=np.asarray(matrix.shape))
    if matrix.format == "coo":
        group.create_dataset("row", data=matrix.row)
        group.create_dataset("col", data=matrix.col)
        return
    if matrix.format not in ("csr", "bsr"):
        matrix = matrix.tocsr()
    group.create_dataset("indices", data=matrix.indices)
    group.create_dataset("indptr", data=matrix.indptr)
    if matrix.format == "bsr":
        group.create_dataset("blocksize", data=np.asarray(matrix.blocksize))


def _storable(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, float, str, complex, bool, np.bool_, np.number, np.ndarray))


def _write_entry(parent: Any, name: str, value: Any) -> None:
    """One value, stored as SciCode's own writer (``save_data_to_hdf5``) stores it: a list or tuple as
    one array when numpy can make one (so it reads back as an array), else a ``list`` group of
    ``var1``, ``var2``, ...; dicts as groups; sparse matrices as ``sparse_matrix`` groups; numbers,
    strings, bools and arrays as datasets; anything else (``None``) as its ``str``."""
    import numpy as np

    if isinstance(value, dict):
        group = parent.create_group(name)
        for key, item in value.items():
            key = str(key)
            if isinstance(item, dict):
                _write_entry(group, key, item)
            elif _is_sparse(item):
                _write_sparse(group, key, item)
            elif isinstance(item, (list, tuple)):
                group.create_dataset(key, data=np.array(item))
            else:
                group.create_dataset(key, data=item if _storable(item) else str(item))
        return
    if isinstance(value, (list, tuple)):
        try:
            array = np.array(value)
            if array.dtype == object:
                raise TypeError("mixed values")
            parent.create_dataset(name, data=array)
        except (TypeError, ValueError):
            items = parent.create_group(name).create_group("list")
            for index, item in enumerate(value):
                _write_entry(items, f"var{index + 1}", item)
        return
    if _is_sparse(value):
        _write_sparse(parent, name, value)
        return
    parent.create_dataset(name, data=value if _storable(value) else str(value))


def write_h5_targets(targets: Mapping[str, list[Any]], path: str | os.PathLike) -> Path:
    """Write ``{step_id: [target per test case]}`` in the official layout, atomically (temp + rename).

    A tuple target becomes ``var1``, ``var2``, ...; anything else a single ``var1``. A broken test
    (``{"__broken_test__": reason}``) becomes an empty group carrying the reason as an attribute.
    """
    from emreason.evals.tasks.scicode import BROKEN

    h5py = _h5py()
    path = Path(path)
    with atomic_target(path) as temporary:
        with h5py.File(temporary, "w") as out:
            for step_id, values in targets.items():
                step = out.create_group(step_id)
                for number, value in enumerate(values, start=1):
                    test = step.create_group(f"test{number}")
                    if isinstance(value, dict) and BROKEN in value:
                        test.attrs[BROKEN_ATTR] = str(value[BROKEN])
                        continue
                    parts = value if isinstance(value, tuple) and len(value) > 1 else (value,)
                    for index, part in enumerate(parts, start=1):
                        _write_entry(test, f"var{index}", part)
    return path
