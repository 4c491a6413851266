"""String metadata that HDF5 cannot store as given must not abort a run at start-up.

Open MPI's `MPI_Get_library_version` ends in a NUL (HDF5 strings end at the first
NUL, so h5py refuses it); undecodable bytes in `sys.argv` or a path reach Python
as lone surrogates, which UTF-8 cannot encode.
"""

from __future__ import annotations

import h5py

from fedmpi.results import ResultsWriter

OPEN_MPI = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022\x00"


def test_open_mpi_version_string_is_stored_without_its_nul(tmp_path):
    path = tmp_path / "r.h5"
    with ResultsWriter(path, attrs={"mpi_library_version": OPEN_MPI, "name": "a\x00b"}) as w:
        w.set_attrs(failure_reason="rank 1: \x00boom")  # later updates take the same path
    with h5py.File(path, "r") as f:
        assert f.attrs["mpi_library_version"] == OPEN_MPI[:-1]
        assert f.attrs["name"] == "ab"
        assert f.attrs["failure_reason"] == "rank 1: boom"


def test_undecodable_bytes_are_kept_as_escapes(tmp_path):
    path = tmp_path / "r.h5"
    arg = b"--out=r\xff.h5".decode("utf-8", "surrogateescape")  # as sys.argv holds it
    with ResultsWriter(path, attrs={"command": f"fedmpi run {arg}"}):
        pass
    with h5py.File(path, "r") as f:
        assert f.attrs["command"] == "fedmpi run --out=r\\udcff.h5"


def test_mpi_library_version_first_line():
    from fedmpi.run import _first_line

    assert _first_line(OPEN_MPI) == OPEN_MPI[:-1]
    assert _first_line("MPICH Version:      4.3.0\nMPICH Release date: x\n") == \
        "MPICH Version:      4.3.0"
    assert _first_line("\x00") == ""
