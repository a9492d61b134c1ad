"""Running ``camid`` jobs (``train-all``'s trainings, ``predict``'s predictions) as separate
processes: ``jobs.queue`` the subprocess queue over this machine's GPUs, ``jobs.backends`` the
engines (local, ray, slurm) behind ``--backend``. Nothing here knows what a job computes."""
