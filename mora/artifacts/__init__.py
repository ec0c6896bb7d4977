"""The artifact model: what a paper table or figure is made of and which runs fill it.

spec.py (the YAML format, parsed and checked) -> grid.py (rows x groups x grid points x seeds) ->
compose.py (each cell composed as mora.train would: run id, config) -> store.py (the run in the results
store, its metrics) -> table.py (the selection rule, the built table); adhoc.py builds the same table
from recorded runs without a spec. mora.report, mora.launch and mora.demo all go through here;
rendering a built table is mora.render's.
"""

from pathlib import Path

from .compose import Composer
from .grid import Candidate, Slot, expand
from .spec import CONF_DIR, Section, Spec, load_spec
from .store import Run, Store, lookup
from .table import Table, build_table, train_command


def section_table(spec: Spec, section: Section, runs_dir, extra: list[str] = (), conf_dir=CONF_DIR) -> Table:
    """Compose, look up and select: the built table of one section of a spec."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(
            f"results store {runs_dir} does not exist: train the artifact's runs first (python -m mora.train ...; "
            "`make demo` for table2's miniature), or point --runs-dir / MORA_RUNS_DIR at the store"
        )
    with Composer(conf_dir) as composer:
        return build_table(spec, section, expand(spec, section, Store(runs_dir, composer), list(extra)), runs_dir)


__all__ = ["CONF_DIR", "Candidate", "Composer", "Run", "Section", "Slot", "Spec", "Store", "Table", "build_table",
           "expand", "load_spec", "lookup", "section_table", "train_command"]
