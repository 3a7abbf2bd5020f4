"""The benchmark tasks, by name: ``TASKS``, the registry of the tasks of every task module.

The interface every task implements is in ``base.py``. Each task lives in a module of its own:
task_images.py (Fashion-MNIST and CIFAR-10, ResNets), task_text_classification.py (clothing
reviews), task_language_model.py (the Brown corpus), task_translation.py (Bible verses, Spanish ->
English) and task_recommendation.py (MovieLens, DLRM).
"""

from __future__ import annotations

from .base import Task
from .task_images import IMAGE_TASKS
from .task_language_model import BROWN_LM, BROWN_LM_LSTM
from .task_recommendation import MOVIELENS_DLRM
from .task_text_classification import REVIEWS_CLASSIFICATION
from .task_translation import BIBLE_TRANSLATION

TASKS: dict[str, Task] = {t.name: t for t in IMAGE_TASKS}
for _task in (BIBLE_TRANSLATION, BROWN_LM, BROWN_LM_LSTM, MOVIELENS_DLRM, REVIEWS_CLASSIFICATION):
    TASKS[_task.name] = _task
