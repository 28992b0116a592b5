"""One of the processes ``test_distributed.py`` starts, as ``torchrun`` would: it trains the runs it is given.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/distributed_worker.py CASES.json OUT_DIR

``CASES.json`` is a list of ``{"name", "config": TrainConfig.to_dict(), "resume": bool}``; with
``resume`` the run stops after its first epoch and is then resumed to the end, by the same
processes. The process group is joined once, here, and every ``train`` call uses it (starting
Python and torch costs seconds, a tiny run a fraction of one). Each rank writes
``OUT_DIR/rank{r}.pt``: per case, the parameters it ended its last epoch with and the number of
rows of each of its batches, so that the test can check that every process holds the same numbers,
bit for bit, and that each trained on its share of the batch only.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from mlp_torch.training import Callback, TrainConfig, TrainState, train


class Record(Callback):
    """The rows of each of this process's batches, and the parameters it ended its last epoch with."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.params: dict[str, torch.Tensor] = {}

    def on_step_start(self, state: TrainState) -> None:
        assert state.batch is not None
        self.rows.append(len(state.batch[1]))

    def on_epoch_end(self, state: TrainState) -> None:
        self.params = {name: t.detach().clone() for name, t in state.model.state_dict().items()}


def main(cases_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    records = {}
    for case in json.loads(Path(cases_file).read_text()):
        config = TrainConfig.from_dict(case["config"])
        record = Record()
        if case["resume"]:
            stopped = train(config, stop_after_epochs=1, callbacks=[record])
            assert stopped["status"] == "interrupted", stopped["status"]
            metrics = train(config, resume=Path(stopped["run_dir"]), callbacks=[record])
        else:
            metrics = train(config, callbacks=[record])
        assert metrics["status"] == "completed", metrics["status"]
        records[case["name"]] = {"rows": record.rows, "params": record.params}
    torch.save(records, Path(out_dir) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
