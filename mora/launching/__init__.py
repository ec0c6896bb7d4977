"""Running a grid's runs: the local work queue (queue.py), Slurm through submitit or sbatch (slurm.py),
and what each run is expected to cost (cost.py). mora.launch is the command that uses them."""
