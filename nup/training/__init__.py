"""Running experiments: the run config, the training loop, data, the run cache, sweeps and learning-rate
schedules."""
