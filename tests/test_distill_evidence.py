"""Issue 18 item 4's pipeline at its smallest (tests/distill_evidence.py): a ControlNet trained on
the Fill50K-like task is distilled into an LLLite, the LLLite's distance to the teacher's
prediction falls below the bare model's, and the controllability of held-out samples is scored
for the teacher, the untrained and the distilled LLLite with the same guides and seeds. The
numbers of longer runs come from `bench/bench_controlnet_vs_lllite.py --distilled`
(docs/controllability.md)."""
import comfy.controlnet
import distill_evidence
from lllite_kit.lllite.weights import read_lllite


def test_trained_controlnet_is_distilled_and_both_are_scored(tiny, tmp_path):
    s = distill_evidence.Settings(images=4, holdout=2, teacher_steps=2, student_steps=2, check_images=1, scored_guides=2)
    e = distill_evidence.run_evidence(tiny, tmp_path, s)
    assert [step for step, _ in e.teacher] == [0, 2] and [step for step, _ in e.student] == [0, 2]
    (_, first), (_, last) = e.student
    assert last["student_mse"] < 0.9 * first["student_mse"] and last["student_mse"] < 0.9 * last["bare_mse"], e.student
    assert e.teacher[-1][1]["heldout_correct"] < e.teacher[0][1]["heldout_correct"]  # the teacher learnt the task
    for score in (e.teacher_controllability, e.untrained, e.distilled):
        assert 0.0 <= score <= 1.0
    assert set(e.scores) == {"teacher", "teacher without input block 0", "distilled", "untrained"}  # F1, chance
    assert all(0.0 <= v <= 1.0 for pair in e.scores.values() for v in pair)
    assert e.above_chance("teacher") == e.scores["teacher"][0] - e.scores["teacher"][1]
    assert e.teacher_controllability == e.teacher[-1][1]["controllability_f1"]
    student = read_lllite(str(e.student_path))  # an ordinary SD1.5 LLLite file, with output blocks
    assert len(student.paths) == 16 * 4 and student.layout_name() == "SD1.5 with output blocks"
    assert isinstance(comfy.controlnet.load_controlnet(str(e.teacher_path)), comfy.controlnet.ControlNet)
