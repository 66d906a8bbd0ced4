"""kohya's Anima-LLLite v2 (named-key files): network, file I/O, guide input and the DiT patch."""
