"""`python -m hydra_plugins.mora_manifest_sweeper MANIFEST TASK`: the overrides of array task TASK (line
TASK + 1), one per line, for slurm/array.sbatch. The manifest is read and checked as the sweeper reads
it (`read_manifest`): a line that is not values only stops the task with `error: ...`, exit status 2."""

import sys

from .manifest_sweeper import read_manifest


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m hydra_plugins.mora_manifest_sweeper MANIFEST TASK", file=sys.stderr)
        return 2
    manifest, task = argv[0], int(argv[1])
    try:
        jobs = read_manifest(manifest)
        if task >= len(jobs):
            raise ValueError(f"{manifest} has no line {task + 1} for array task {task}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(*jobs[task], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
