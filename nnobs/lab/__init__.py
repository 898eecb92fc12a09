"""The lab: new runs, forks and sweeps."""
