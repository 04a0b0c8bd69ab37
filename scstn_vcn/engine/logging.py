"""Per-epoch training log: a CSV file (always) and TensorBoard scalars (when installed).

The CSV's columns are fixed by the first row written; a later row with new keys (an epoch with
evaluation results) rewrites the file with the wider header, so the file stays one table.
"""

import csv
import os


class EpochLogger:
    def __init__(self, folder, enabled=True, tensorboard=True, resume=False):
        self.enabled = enabled
        self.path = os.path.join(folder, "log.csv")
        self.rows = []
        self.writer = None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        if resume and os.path.exists(self.path):
            self.rows = read_csv_log(self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the CSV is the log
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(os.path.join(folder, "tensorboard"))

    def log(self, row):
        """Append one epoch's values (a flat dict of numbers/strings)."""
        if not self.enabled:
            return
        # A resumed run replays nothing, but drop rows of epochs at or after this one (written by
        # an interrupted run after its last checkpoint) so each epoch appears once.
        self.rows = [r for r in self.rows if int(r["epoch"]) < int(row["epoch"])]
        self.rows.append(dict(row))
        self._write()
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, int(row["epoch"]))
            self.writer.flush()

    def _write(self):
        fields = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(row)
        os.replace(tmp, self.path)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def read_csv_log(path):
    """Rows of a log.csv as dicts, numbers parsed (empty cells dropped)."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if value in (None, ""):
                    continue
                try:
                    parsed[key] = float(value) if key != "epoch" else int(value)
                except ValueError:
                    parsed[key] = value
            rows.append(parsed)
    return rows
