"""One engine per DVC stage, named as the stage is in `dvc.yaml`, `stages/`, `params.yaml` and `config`.

The contract every engine keeps (`genz_speak.stage.main` runs it):
- `Paths`: a frozen dataclass of the stage's input and output paths (`dvc.yaml`'s `cmd` passes them);
- `run(cfg, paths) -> metrics`: `cfg` is the stage's validated `params.yaml` section;
- inputs are validated before anything is written; outputs are written atomically (a temporary file or
  folder renamed into place), so a failed run leaves the previous outputs as they were;
- the returned dict is the stage's metrics, which the stage script writes to `metrics/<stage>.json`.
Domain logic lives in the wings (`data`, `teachers`, `training`, `judges`, `export`, `reports`); an
engine only orchestrates it.
"""
