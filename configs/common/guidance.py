"""The guidance node of task-conditioned models: one node, three sources.

Switch with ``model.guidance.name=task|text|vector``:
* ``task``: a learned embedding per ``task_id`` (``num_tasks`` of them);
* ``text``: the record's ``prompt`` through the packaged all-MiniLM-L6-v2 sentence
  encoder (frozen, cached per prompt), projected to ``dim``;
* ``vector``: the input dict's ``"guidance"`` tensor of size ``in_dim`` (e.g. a
  multimodal LLM's SEG-token embedding), projected to ``dim``.
"""
from detectron2.config import LazyCall as L

from tokenprune.modeling import build_guidance

GUIDANCE_DIM = 128


def guidance_node(num_tasks: int, dim: int = GUIDANCE_DIM, first_task_id: int = 0,
                  in_dim: int = 384):
    return L(build_guidance)(name="task", dim=dim, num_tasks=num_tasks,
                             first_task_id=first_task_id, in_dim=in_dim)
