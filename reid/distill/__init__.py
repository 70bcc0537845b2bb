"""Knowledge distillation, training-only: self-distillation heads and the frozen offline teacher.

Nothing here changes the model that is exported or evaluated; the heads, the adapter and the teacher
live in the training objective (:mod:`reid.engine.objective`). See ``docs/DISTILLATION.md``.
"""

from reid.distill.self_distill import SelfDistillHeads, StageHead
from reid.distill.teacher import FrozenTeacher, TeacherDistillation, load_teacher, teacher_outputs

__all__ = [
    "FrozenTeacher",
    "SelfDistillHeads",
    "StageHead",
    "TeacherDistillation",
    "load_teacher",
    "teacher_outputs",
]
