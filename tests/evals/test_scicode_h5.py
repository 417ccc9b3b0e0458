"""SciCode test_data.h5: the official layout read as process_hdf5_to_tuple does, our writer, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
from emreason.evals.tasks.scicode import BROKEN, codec  # noqa: E402
from emreason.evals.tasks.scicode_h5 import H5TargetsError, read_h5_targets, write_h5_targets  # noqa: E402


def _official_style_file(path):
    """Written directly with h5py in the published layout (not with our writer)."""
    from scipy.sparse import coo_matrix

    with h5py.File(path, "w") as f:
        f.create_dataset("5.1/test1/var1", data=np.arange(6.0).reshape(2, 3))
        f.create_dataset("5.1/test2/var1", data=2.5)
        f.create_dataset("5.1/test2/var2", data=b"hello")
        f.create_dataset("5.1/test3/var1/list/0", data=np.array([1, 2]))
        f.create_dataset("5.1/test3/var1/list/1", data=7)
        f.create_dataset("5.2/test1/var1/0.5", data=3.0)  # dict with a float key
        f.create_dataset("5.2/test1/var1/name", data=b"abc")
        matrix = coo_matrix(np.array([[0, 2.0], [3.0, 0]]))
        f.create_dataset("5.2/test2/var1/sparse_matrix/data", data=matrix.data)
        f.create_dataset("5.2/test2/var1/sparse_matrix/row", data=matrix.row)
        f.create_dataset("5.2/test2/var1/sparse_matrix/col", data=matrix.col)
        f.create_dataset("5.2/test2/var1/sparse_matrix/shape", data=np.array([2, 2]))


def test_reads_the_official_layout(tmp_path):
    path = tmp_path / "test_data.h5"
    _official_style_file(path)
    targets = read_h5_targets(path, {"5.1": 3, "5.2": 2})
    first, second, third = targets["5.1"]
    assert np.array_equal(first, np.arange(6.0).reshape(2, 3))
    assert second == (2.5, "hello")  # several entries -> a tuple; bytes decoded
    assert isinstance(third, list) and np.array_equal(third[0], [1, 2]) and third[1] == 7
    mapping, sparse = targets["5.2"]
    assert mapping == {0.5: 3.0, "name": "abc"}
    assert sparse.format == "coo" and np.array_equal(sparse.toarray(), [[0, 2.0], [3.0, 0]])


def test_writer_round_trips_through_the_reader_and_codec(tmp_path):
    from scipy.sparse import csr_matrix

    values = {
        "9.1": [
            np.linspace(0, 1, 5),
            (np.int64(3), "text", [1.5, 2.5]),  # several entries: var1..var3; the list becomes an array
            {1.0: np.array([1, 2]), "k": 4},
            {BROKEN: "NameError: L"},
            csr_matrix(np.eye(3)),
        ]
    }
    path = write_h5_targets(values, tmp_path / "out.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]  # atomic: no temp file left
    with h5py.File(path) as f:  # the official layout, 1-based tests, var1..varK
        assert set(f["9.1"]) == {"test1", "test2", "test3", "test4", "test5"}
        assert set(f["9.1/test2"]) == {"var1", "var2", "var3"}
        assert isinstance(f["9.1/test2/var3"], h5py.Dataset)  # as SciCode's save_data_to_hdf5: np.array(list)
        assert "sparse_matrix" in f["9.1/test5/var1"] and len(f["9.1/test4"]) == 0
    back = read_h5_targets(path, {"9.1": 5})["9.1"]
    assert np.allclose(back[0], values["9.1"][0])
    assert back[1][0] == 3 and back[1][1] == "text"
    assert isinstance(back[1][2], np.ndarray) and np.array_equal(back[1][2], [1.5, 2.5])
    assert np.array_equal(back[2][1.0], [1, 2]) and back[2]["k"] == 4
    assert back[3] == {BROKEN: "NameError: L"}
    assert np.array_equal(back[4].toarray(), np.eye(3))
    enc, dec = codec()["_enc"], codec()["_dec"]
    import json

    again = dec(json.loads(json.dumps(enc(back[4]))))
    assert again.format == "csr" and np.array_equal(again.toarray(), np.eye(3))


def test_clear_errors(tmp_path):
    with pytest.raises(H5TargetsError, match="does not exist"):
        read_h5_targets(tmp_path / "absent.h5", {"1.1": 1})
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(H5TargetsError, match="not a readable HDF5"):
        read_h5_targets(corrupt, {"1.1": 1})
    path = write_h5_targets({"1.1": [1.0]}, tmp_path / "small.h5")
    with pytest.raises(H5TargetsError, match=r"step\(s\) 2\.3"):
        read_h5_targets(path, {"1.1": 1, "2.3": 2})
    with pytest.raises(H5TargetsError, match="step 1.1 has no test2"):
        read_h5_targets(path, {"1.1": 2})


def test_writer_follows_scicode_for_mixed_lists_and_none(tmp_path):
    # np.array cannot hold these as one array: a "list" group of var1, var2, ... (read back raw, as the
    # official process_hdf5_list does: strings stay bytes); None is stored as its str.
    mixed = ["a", np.zeros(2), 3]
    path = write_h5_targets({"4.2": [mixed, None]}, tmp_path / "mixed.h5")
    with h5py.File(path) as f:
        assert set(f["4.2/test1/var1/list"]) == {"var1", "var2", "var3"}
    first, second = read_h5_targets(path, {"4.2": 2})["4.2"]
    assert first[0] == b"a" and np.array_equal(first[1], np.zeros(2)) and first[2] == 3
    assert second == "None"
