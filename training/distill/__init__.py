"""Distilling a full ControlNet into a ControlNet-LLLite: the LLLite-patched model learns to
predict what the ControlNet-guided model predicts, on the one training engine (teacher.py:
the ControlNet's prediction; adapter.py: the LLLite adapter that learns it; evaluate.py: how
close student and bare model are to the teacher; session.py: a run from ComfyUI objects)."""
