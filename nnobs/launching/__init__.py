"""Starting, watching and stopping a run's worker, locally or on Slurm, through one launcher interface; a run's status."""
