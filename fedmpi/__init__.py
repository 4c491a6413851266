"""fedmpi: an MPI benchmark suite for communication compression in federated learning."""

__version__ = "0.1.0"
