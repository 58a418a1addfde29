"""Run `fastnaive train --distributed ...` under mpirun with one failure injected.

    mpirun -n 2 python faulty_cli.py PHASE RANK ERROR -- train --distributed ...

makes the function of PHASE raise ERROR("injected PHASE failure") on rank RANK, the first
time that rank calls it, then runs fastnaive.cli.main with the arguments after "--". The
job must end, on every rank, with a non-zero status and one line naming the failure.
"""

import sys
import zipfile

import fastnaive
from fastnaive import checkpoints, cli, engine, training
from fastnaive.distributed import world
from fastnaive.models import NaiveSequential

# PHASE: (object, attribute) whose call fails.
PHASES = {
    "arguments": (cli, "check_options"),
    "data": (cli, "load_dataset"),
    "model": (cli, "build_model"),
    "fit-arguments": (training, "_checked_callbacks"),
    "resume": (checkpoints, "load"),
    "training": (engine.Step, "train"),
    "validation": (training, "_validate"),
    "checkpoint": (checkpoints, "save"),
    "evaluation": (fastnaive, "evaluate"),
    "saving": (NaiveSequential, "save"),
}
# The phases that only rank 0 reaches.
ROOT_ONLY = ("resume", "checkpoint", "evaluation", "saving")
ERRORS = {
    "ValueError": ValueError,
    "OSError": OSError,
    "MemoryError": MemoryError,
    "RuntimeError": RuntimeError,
    "KeyboardInterrupt": KeyboardInterrupt,
    "BadZipFile": zipfile.BadZipFile,
    "KeyError": KeyError,
}


def inject(phase, error):
    owner, name = PHASES[phase]
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        setattr(owner, name, original)
        raise error(f"injected {phase} failure")

    setattr(owner, name, failing)


def main():
    phase, rank, error = sys.argv[1:4]
    assert sys.argv[4] == "--"
    if world().Get_rank() == int(rank):
        inject(phase, ERRORS[error])
    return cli.main(sys.argv[5:])


if __name__ == "__main__":
    sys.exit(main())
