"""Data loaders and evaluators for the task scenes (docs/datasets.md): 10-25 objects per
image, tasks answered by 1-3 of them. Same record format, mapper and evaluators as
:mod:`.synthetic_tasks_data`; 11 tasks (ids 0..10) instead of 8."""
from .synthetic_tasks_data import dataloader

dataloader.train.dataset.names = "synthetic_task_scenes_train"
dataloader.test.dataset.names = "synthetic_task_scenes_val"
