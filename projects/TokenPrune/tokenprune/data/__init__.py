"""Datasets: the synthetic shapes generator and registration, the scenes of the SViT
ablation study (:mod:`.synthetic_study`), COCO-format helpers, and what a config reads
(:mod:`.catalog`).

Importing this package registers ``synthetic_shapes_{train,val,minival}``,
``synthetic_mixcolor_{train,val,minival}``, ``synthetic_tasks_{train,val}``,
``synthetic_study_{train,val,minival,pilot_train,pilot_val}``,
``synthetic_task_scenes_{train,val,minival,pilot_train,pilot_val}``
(cheap: their files are generated on first use) and ``coco_tasks_*`` (from $DETECTRON2_DATASETS).
:class:`TaskDatasetMapper` is the mapper of the generated task datasets (training targets
after the augmentation; held-out prompts at evaluation).
"""

from .catalog import dataset_names, first_images_dataset, first_test_inputs, test_metadata
from .coco import prepare_dataset, write_coco_layout
from .coco_tasks import COCO_TASKS, register_coco_tasks, write_coco_tasks_layout
from .synthetic import (
    MIXED_COLOR_SPLITS,
    SHAPE_CLASSES,
    SYNTHETIC_SPLITS,
    default_data_root,
    generate_synthetic_shapes,
    register_synthetic_shapes,
)
from .scene_statistics import scene_statistics
from .synthetic_study import (
    STUDY_CLASSES,
    STUDY_SPLITS,
    generate_study_scenes,
    register_synthetic_study,
)
from .synthetic_task_scenes import SCENE_TASKS, register_synthetic_task_scenes
from .synthetic_tasks import SYNTHETIC_TASKS, register_synthetic_tasks
from .task_mapper import TaskDatasetMapper

register_synthetic_shapes()
register_synthetic_tasks()
register_synthetic_study()
register_synthetic_task_scenes()
register_coco_tasks()

__all__ = [
    "dataset_names",
    "first_test_inputs",
    "first_images_dataset",
    "test_metadata",
    "COCO_TASKS",
    "SYNTHETIC_TASKS",
    "SCENE_TASKS",
    "TaskDatasetMapper",
    "register_synthetic_task_scenes",
    "register_coco_tasks",
    "register_synthetic_tasks",
    "write_coco_tasks_layout",
    "MIXED_COLOR_SPLITS",
    "SHAPE_CLASSES",
    "SYNTHETIC_SPLITS",
    "default_data_root",
    "generate_synthetic_shapes",
    "prepare_dataset",
    "register_synthetic_shapes",
    "write_coco_layout",
    "STUDY_CLASSES",
    "STUDY_SPLITS",
    "generate_study_scenes",
    "register_synthetic_study",
    "scene_statistics",
]
