"""What `--mode=train|sample|eval|edit|interpolate` runs (imported by main.py, the pipeline and the
converter): the train loop and its state, sampling to files, evaluation, editing."""
